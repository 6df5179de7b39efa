"""The test layers stay honest: a test that starts a process or runs a binary's main is `e2e`.

The unit layer (`pytest -m "not e2e and not slow" tests`) must not start binaries. A static read
of the test sources finds the tests that do: a test starts a process when it, a test module's
function that it calls or names, or a test module's fixture that it takes, calls `subprocess`,
`Popen`, `run_binary` / `run_train` (test_train_helpers) or the `main` of a binary
(`test_binaries.binaries()`). Each of those must be marked: `@pytest.mark.e2e`, or
`pytestmark = pytest.mark.e2e` for its module. Also checked: every mark is pytest's or a layer's
(a misspelt one would select nothing), and CI's command selects no layer.
"""
import ast
import glob
import os
from typing import Dict, List, Set, Tuple

import test_binaries
import test_train_helpers as h

SPAWNING_FUNCTIONS = {"Popen", "run_binary", "run_train"}


def _is_mark(node: ast.AST, name: str) -> bool:
  """`pytest.mark.<name>`."""
  return (isinstance(node, ast.Attribute) and node.attr == name
          and isinstance(node.value, ast.Attribute) and node.value.attr == "mark")


def _module_marked(tree: ast.Module, name: str) -> bool:
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
      values = node.value.elts if isinstance(node.value, (ast.List, ast.Tuple)) else [node.value]
      return any(_is_mark(v, name) for v in values)
  return False


def _binary_mains(tree: ast.Module, binaries: Set[str]) -> Set[str]:
  """The module's names for binaries (`from flip_t5x import eval as flip_eval`: flip_eval)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == "flip_t5x":
      names |= {a.asname or a.name for a in node.names if a.name in binaries}
    elif isinstance(node, ast.Import):  # import flip_t5x.eval as flip_eval
      names |= {a.asname for a in node.names
                if a.asname and a.name.startswith("flip_t5x.")
                and a.name[len("flip_t5x."):] in binaries}
  return names


def _spawns_itself(fn: ast.AST, binary_names: Set[str]) -> bool:
  for node in ast.walk(fn):
    if not isinstance(node, ast.Call):
      continue
    f = node.func
    if isinstance(f, ast.Attribute):
      if isinstance(f.value, ast.Name) and (
          f.value.id == "subprocess" or (f.attr == "main" and f.value.id in binary_names)):
        return True
      if f.attr in SPAWNING_FUNCTIONS:
        return True
    elif isinstance(f, ast.Name) and f.id in SPAWNING_FUNCTIONS:
      return True
  return False


def _namespace(tree: ast.Module, name: str, modules: Set[str]) -> Dict[str, Tuple[str, str]]:
  """Module-level names -> (test module, function): its own functions and those it imports."""
  names = {n.name: (name, n.name) for n in tree.body if isinstance(n, ast.FunctionDef)}
  for node in tree.body:
    if isinstance(node, ast.ImportFrom) and node.module in modules:
      names.update({a.asname or a.name: (node.module, a.name) for a in node.names})
  return names


def unmarked_spawning_tests(sources: Dict[str, str], binaries: Set[str]) -> List[str]:
  """`module::test` for each test of `sources` ({test module: source}) that starts a process or
  a binary's main without an e2e mark."""
  trees = {name: ast.parse(source) for name, source in sources.items()}
  reaches: Dict[Tuple[str, str], Set[Tuple[str, str]]] = {}
  spawning, tests = set(), {}
  for module, tree in trees.items():
    names = _namespace(tree, module, set(trees))
    aliases = {a.asname or a.name: a.name for node in tree.body if isinstance(node, ast.Import)
               for a in node.names if a.name in trees}
    binary_names = _binary_mains(tree, binaries)
    module_e2e = _module_marked(tree, "e2e")
    for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
      key = (module, fn.name)
      # What it reaches: the test modules' functions it names or calls, and its fixtures.
      reaches[key] = {names[n.id] for n in ast.walk(fn) if isinstance(n, ast.Name)
                      and n.id in names} | {names[a.arg] for a in fn.args.args if a.arg in names}
      reaches[key] |= {(aliases[n.value.id], n.attr) for n in ast.walk(fn)
                       if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
                       and n.value.id in aliases}
      if _spawns_itself(fn, binary_names):
        spawning.add(key)
      if fn.name.startswith("test_") and not module_e2e and not any(
          _is_mark(d, "e2e") for d in fn.decorator_list):
        tests[key] = f"{module}::{fn.name}"
  grown = True
  while grown:
    new = {key for key, targets in reaches.items() if targets & spawning} - spawning
    spawning |= new
    grown = bool(new)
  return sorted(label for key, label in tests.items() if key in spawning)


def test_every_test_that_starts_a_process_is_e2e():
  sources = {}
  for path in glob.glob(os.path.join(h.TESTS, "test_*.py")):
    with open(path, encoding="utf-8") as f:
      sources[os.path.splitext(os.path.basename(path))[0]] = f.read()
  unmarked = unmarked_spawning_tests(sources, set(test_binaries.binaries()))
  assert not unmarked, ("these start a process or a binary's main; mark them "
                        f"@pytest.mark.e2e (or their module pytestmark): {unmarked}")


PLANTED = {"test_a": '''
import subprocess
import pytest
from flip_t5x import train as train_binary
from flip_t5x import network
import test_train_helpers as h

def _run(args):
  return h.run_binary("train", args)

@pytest.fixture
def run(tmp_path):
  return _run([str(tmp_path)])

def test_via_fixture(run):
  pass

def test_via_pool(pool):
  pool.submit(_run, [])

def test_subprocess():
  subprocess.run(["true"])

def test_main_in_process():
  train_binary.main(["train"])

@pytest.mark.e2e
def test_marked():
  subprocess.run(["true"])

@pytest.mark.slow
def test_slow_is_not_e2e():
  subprocess.run(["true"])

def test_library_call():
  network.main([])

def test_main_imported_as_a_module():
  import flip_t5x.train as t
  t.main(["train"])
''', "test_b": '''
import test_a
from test_a import run as imported_fixture

def test_helper_of_another_module():
  test_a._run([])

def test_fixture_of_another_module(imported_fixture):
  pass

def test_plain():
  test_a.network.main([])
'''}


def test_the_check_finds_planted_tests():
  found = unmarked_spawning_tests(PLANTED, {"train"})
  assert found == ["test_a::test_main_imported_as_a_module", "test_a::test_main_in_process",
                   "test_a::test_slow_is_not_e2e",
                   "test_a::test_subprocess", "test_a::test_via_fixture", "test_a::test_via_pool",
                   "test_b::test_fixture_of_another_module",
                   "test_b::test_helper_of_another_module"]
  marked = {"test_a": "import pytest\npytestmark = [pytest.mark.e2e]\n" + PLANTED["test_a"],
            "test_b": PLANTED["test_b"]}
  assert unmarked_spawning_tests(marked, {"train"}) == found[-2:]
  slow = dict(PLANTED, test_a="import pytest\npytestmark = pytest.mark.slow\n" + PLANTED["test_a"])
  assert unmarked_spawning_tests(slow, {"train"}) == found


def test_every_mark_is_pytests_or_a_layer():
  """A misspelt layer mark (`pytest.mark.e2E`) would leave its test in the unit layer silently."""
  known = {"e2e", "slow", "parametrize", "skipif", "skip", "xfail", "usefixtures", "filterwarnings"}
  unknown = []
  for path in glob.glob(os.path.join(h.TESTS, "*.py")):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read())
    unknown += [f"{os.path.basename(path)}:{n.lineno}: {n.attr}" for n in ast.walk(tree)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
                and n.value.attr == "mark" and n.attr not in known]
  assert not unknown, unknown


def test_ci_runs_every_layer():
  """scripts/test.sh (what CI runs) selects no marker: the e2e and slow layers run there."""
  with open(os.path.join(h.ROOT, "scripts", "test.sh"), encoding="utf-8") as f:
    command = [line for line in f if "-m pytest" in line]
  assert len(command) == 1 and " -m " not in command[0].split("-m pytest", 1)[1], command
