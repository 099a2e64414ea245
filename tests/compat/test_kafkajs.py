"""kafkajs (Node) against the broker under test, via tests/compat/node/kafkajs_roundtrip.js."""

from __future__ import annotations

import json

import pytest

from conftest import NODE_DIR, require_tool, run, unique


def test_kafkajs_produce_group_commit_resume(bootstrap):
    node = require_tool("node")
    if not (NODE_DIR / "node_modules" / "kafkajs").is_dir():
        pytest.fail("kafkajs not installed in tests/compat/node; run scripts/install-test-deps.sh",
                    pytrace=False)
    cp = run([node, str(NODE_DIR / "kafkajs_roundtrip.js"), bootstrap, unique("kjs"), unique("gkjs")],
             timeout=85, check=False, cwd=NODE_DIR)
    out = cp.stdout.decode(errors="replace").strip().splitlines()
    assert out, f"no output (exit {cp.returncode}); stderr: {cp.stderr.decode(errors='replace')[-3000:]}"
    res = json.loads(out[-1])
    assert cp.returncode == 0 and res.get("ok"), (
        f"kafkajs failed (exit {cp.returncode}): {res}\nstderr: {cp.stderr.decode(errors='replace')[-3000:]}")
    assert res["round1"] == 20 and res["round2"] == 6
