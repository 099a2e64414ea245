"""Fixtures for the broker robustness suite (tests/broker); see kafki_harness.py."""

from __future__ import annotations

import os
import resource
import shutil

import pytest

from kafki_harness import ALLOW_LOG_MARKER, Broker, check_logs, fail_on_bug_lines, new_workdir


@pytest.fixture
def broker_factory(request):
    """broker_factory(settings=None, extra_args=None, start=True, nofile=None) -> Broker.

    Brokers are SIGKILLed at teardown if still running. A line of any run's log
    that means a bug in Kafki (kafki_harness.BUG_PATTERNS, minus the test's
    allow_log marks) fails the test. Work dirs of passed tests are removed."""
    made: list[Broker] = []

    def make(settings: dict[str, str] | None = None, extra_args: list[str] | None = None,
             start: bool = True, nofile: tuple[int, int] | None = None) -> Broker:
        b = Broker(new_workdir(request.node.name), settings, extra_args, nofile)
        made.append(b)
        if start:
            b.start()
        return b

    yield make
    for b in made:
        b.cleanup()
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    found = check_logs(request, [path for b in made for path in b.logs])
    for b in made:
        if failed or found or os.environ.get("KAFKI_KEEP_DATA") == "1":
            print(f"\nkept broker work dir {b.workdir} (logs: {[str(p) for p in b.logs]})")
        else:
            shutil.rmtree(b.workdir, ignore_errors=True)
    fail_on_bug_lines(found)


@pytest.fixture
def broker(broker_factory) -> Broker:
    return broker_factory()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if not hasattr(item.session, "_broker_reports"):
        item.session._broker_reports = []
    item.session._broker_reports.append(rep)


def pytest_configure(config):
    config.addinivalue_line("markers", ALLOW_LOG_MARKER)
    # kafka-python (used only for its CRC32C) warns about importlib.resources on import.
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:kafka.*")
    config.addinivalue_line("filterwarnings", "ignore:.*is deprecated. Use files:DeprecationWarning")


@pytest.fixture(scope="session", autouse=True)
def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 20000) if hard != resource.RLIM_INFINITY else 20000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield


