"""Shared fixtures, the test layers' markers, and the rule that fails a run on a skip that is not
about an accelerator."""
import re

import gin
import pytest

from flip_t5x.data import preprocessors


@pytest.fixture
def clean_gin_and_counters():
  """A clean gin config and zeroed skip counters around a test that binds its own data settings."""
  gin.clear_config()
  preprocessors.reset_counts()
  yield
  gin.clear_config()


# ------------------------------------------------------------------------------------------------
# Skips. A skipped test is a test that did not run, so only two reasons may skip one: the machine
# has or lacks an accelerator (or its toolchain), or the jax/jaxlib differs from the tested one.
# Any other skip fails the run, with its reason listed (scripts/test.sh also shows reasons, -rs).
ALLOWED_SKIP_REASON = re.compile(r"accelerator|other than the tested one", re.I)
_disallowed_skips = []


def _skip_reason(report) -> str:
  longrepr = report.longrepr
  return str(longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else longrepr)


def pytest_runtest_logreport(report):
  if report.skipped and not hasattr(report, "wasxfail"):
    reason = _skip_reason(report)
    if not ALLOWED_SKIP_REASON.search(reason):
      _disallowed_skips.append(f"{report.nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
  if _disallowed_skips and exitstatus == pytest.ExitCode.OK:
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
  if _disallowed_skips:
    terminalreporter.section("skips that fail the run")
    terminalreporter.write_line("Only a missing/present accelerator or an untested jax/jaxlib may "
                                "skip a test; these did not run:")
    for line in _disallowed_skips:
      terminalreporter.write_line(f"  {line}")


# ------------------------------------------------------------------------------------------------
# Layers, marked in the test modules: `pytestmark = pytest.mark.e2e` or `@pytest.mark.e2e` (
# tests/test_layers.py fails on an unmarked test that starts a process or a binary's main), and
# `slow`. The unit layer is `pytest -m "not e2e and not slow" tests`; CI runs everything.
def pytest_configure(config):
  config.addinivalue_line(
      "markers", "e2e: starts a process (a binary, as a user runs it), runs a binary's main in "
      "process, or trains or evaluates a whole run")
  config.addinivalue_line(
      "markers", "slow: in process, but seconds on a CPU: runs, differentiates or compiles a "
      "whole model, traces full-size models, scores a whole task or reads the data many times")
