"""Fixtures for the multi-node suite (tests/cluster); see cluster_harness.py."""

from __future__ import annotations

import resource

import pytest

from cluster_harness import DEFAULT_KAFKI_BIN, Cluster, new_workdir
from kafki_harness import ALLOW_LOG_MARKER, check_logs, fail_on_bug_lines


@pytest.fixture
def cluster_factory(request):
    """cluster_factory(n=3, settings=None, proxies=False, start=True, **kwargs) -> Cluster.

    kwargs go to Cluster (cluster_flags, node_settings, extra_args, cores).
    At teardown every node gets SIGTERM, then SIGKILL after 10 s, and every
    proxy stops, whatever the test did. A line of any node's log that means a
    bug in Kafki (kafki_harness.BUG_PATTERNS, minus the test's allow_log marks)
    fails the test. Work dirs of passed tests are removed (KAFKI_KEEP_DATA=1 keeps them);
    those of failed tests are kept and their paths printed."""
    made: list[Cluster] = []

    def make(n: int = 3, settings: dict[str, str] | None = None, proxies: bool = False,
             start: bool = True, **kwargs) -> Cluster:
        if not DEFAULT_KAFKI_BIN.exists():
            pytest.fail(f"{DEFAULT_KAFKI_BIN} missing: run `cargo build -p kafki`", pytrace=False)
        c = Cluster(n, new_workdir(request.node.name), DEFAULT_KAFKI_BIN, settings, proxies,
                    **kwargs)
        made.append(c)
        if start:
            c.start()
        return c

    yield make
    for c in made:
        c.shutdown(grace=10)
    failed = any(getattr(request.node, f"rep_{when}", None) is not None
                 and getattr(request.node, f"rep_{when}").failed for when in ("setup", "call"))
    found = check_logs(request, [path for c in made for node in c for path in node.logs])
    for c in made:
        c.cleanup(failed=failed or bool(found))
    fail_on_bug_lines(found)


@pytest.fixture
def cluster(cluster_factory) -> Cluster:
    """Three nodes, no proxies, started."""
    return cluster_factory()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def pytest_configure(config):
    config.addinivalue_line("markers", ALLOW_LOG_MARKER)
    # kafka-python (used only for its CRC32C) warns about importlib.resources on import.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:kafka.*")
    if not config.pluginmanager.hasplugin("timeout"):
        # Without pytest-timeout (outside .venv-compat) the marks are inert, not unknown.
        config.addinivalue_line("markers", "timeout(seconds): per-test limit (pytest-timeout)")


@pytest.fixture(scope="session", autouse=True)
def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
