"""Shared fixtures, and the rule that fails a run on a skip that is not about an accelerator."""
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
# Layers. `pytest -m "not e2e" tests` runs the unit layer alone; CI runs everything. A test is
# end-to-end when it, or a fixture it uses, starts a process (a binary, as a user runs it), or
# when its module trains or evaluates whole runs in process (E2E_MODULES).
E2E_MODULES = {"test_demo", "test_demo_compare", "test_train_e2e", "test_train_multiprocess",
               "test_train_webdataset", "test_runtime_multidevice", "test_masking_in_training",
               "test_imagenet_eval", "test_eval_memory", "test_t5x_interop"}
_SPAWNS = re.compile(r"\bsubprocess\.|\bPopen\(|\brun_binary\(|\brun_train\(|\b_run_binary\(|"
                     r"\bstart\(\"")


def _starts_a_process(item) -> bool:
  import inspect  # pylint: disable=g-import-not-at-top
  functions = [getattr(item, "function", None)]
  for name in getattr(item, "fixturenames", ()):
    for fixturedef in item._fixtureinfo.name2fixturedefs.get(name, ()):  # pylint: disable=protected-access
      functions.append(fixturedef.func)
  for fn in functions:
    try:
      if fn is not None and _SPAWNS.search(inspect.getsource(fn)):
        return True
    except (OSError, TypeError):
      continue
  return False


def pytest_configure(config):
  config.addinivalue_line("markers", "e2e: starts a binary or trains a whole run (CI runs it; "
                          "pytest -m 'not e2e' leaves it out)")


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.module.__name__ in E2E_MODULES or _starts_a_process(item):
      item.add_marker(pytest.mark.e2e)
