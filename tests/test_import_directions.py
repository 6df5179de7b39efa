"""The house's import graph: no cycle, and every arrow down the documented order.

The graph is read from the source with `ast`, imports inside functions included (a lazy import is
still an import: it hides a cycle, it does not remove it); `from pkg import mod` imports `pkg.mod`.
Collapsed to packages (each `flip_t5x` subpackage, each top-level module, `tasks`, `gin_configs`)
it must have no cycle and no arrow up `ORDER`, the order docs/architecture.md states; the modules
themselves must have no cycle either. A layer that imports upward (the network reading the
runtime, data code reading the model, library code importing a binary) is how a package grows
back into a knot, so each rule is a failing test rather than a convention.
"""
import ast
import collections
import os
import re
import subprocess
import sys
from typing import Dict, Iterator, List, Mapping, Sequence, Set, Tuple

import pytest

import test_train_helpers as h

PACKAGES = ("flip_t5x", "tasks", "gin_configs")
BINARY_MARK = re.compile(r'^if __name__ == "__main__":', re.M)
BINARIES = "binaries"  # in ORDER: every module with a `__main__` block (each a top-level module)

# Top to bottom; a package imports from its own level or below. docs/architecture.md lists the
# same levels (test_the_docs_state_the_order).
ORDER: Tuple[Tuple[str, ...], ...] = (
    (BINARIES,),
    ("flip_t5x.pytorch", "flip_t5x.benchmarking"),
    ("flip_t5x.predictor", "flip_t5x.pretrained"),
    ("flip_t5x.runtime",),
    ("tasks",),
    ("flip_t5x.evaluation", "flip_t5x.checkpoints"),
    ("flip_t5x.models", "flip_t5x.flops", "flip_t5x.train_state", "flip_t5x.xla_options"),
    ("flip_t5x.network",),
    ("flip_t5x.layers", "flip_t5x.backends", "flip_t5x.losses"),
    ("flip_t5x.data",),
    ("flip_t5x.progress", "flip_t5x.run_metrics", "flip_t5x._quiet", "flip_t5x", "gin_configs"),
)

Graph = Mapping[str, Set[str]]


def _modules() -> Iterator[Tuple[str, str]]:
  """(dotted module name, path) of every Python module of the product."""
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(h.ROOT, package)):
      for name in sorted(files):
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, h.ROOT)[:-3].replace(os.sep, ".")
          yield dotted.removesuffix(".__init__"), path


def _import_statements(path: str, dotted: str) -> Iterator[Tuple[str, Sequence[str]]]:
  """(module, names) per import in `path`, relative imports resolved; names () for `import m`."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, ()
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      yield base, [alias.name for alias in node.names]


def _imports(path: str, dotted: str) -> Set[str]:
  """Modules (or module.attribute) that `path` imports, third-party ones included."""
  found = set()
  for base, names in _import_statements(path, dotted):
    found.add(base)
    found.update(f"{base}.{name}" for name in names)
  return found


def _product_imports(path: str, dotted: str, product: Set[str]) -> Set[str]:
  """The product's modules `path` imports: `from pkg import mod` is `pkg.mod`, `from pkg import
  name` is `pkg`."""
  found = set()
  for base, names in _import_statements(path, dotted):
    targets = [f"{base}.{n}" if f"{base}.{n}" in product else base for n in names] or [base]
    found.update(t for t in targets if t in product)
  return found


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
  return {dotted: _imports(path, dotted) for dotted, path in _modules()}


@pytest.fixture(scope="module")
def module_graph() -> Dict[str, Set[str]]:
  """module -> the product's modules it imports (itself left out)."""
  paths = dict(_modules())
  return {m: _product_imports(p, m, set(paths)) - {m} for m, p in paths.items()}


@pytest.fixture(scope="module")
def binaries() -> Set[str]:
  found = set()
  for dotted, path in _modules():
    with open(path, encoding="utf-8") as f:
      if BINARY_MARK.search(f.read()):
        found.add(dotted)
  return found


def package_of(module: str) -> str:
  """The package-graph node of `module`: its `flip_t5x` subpackage, `tasks`, `gin_configs`, or
  (a top-level `flip_t5x` module) itself."""
  parts = module.split(".")
  if parts[0] != "flip_t5x":
    return parts[0]
  if len(parts) > 2 or os.path.isdir(os.path.join(h.ROOT, *parts)):
    return ".".join(parts[:2])
  return module


def collapse(module_graph: Graph) -> Tuple[Dict[str, Set[str]], Dict[Tuple[str, str], List[str]]]:
  """(package graph, {(package, package): the module imports that make that arrow})."""
  packages: Dict[str, Set[str]] = {package_of(m): set() for m in module_graph}
  why: Dict[Tuple[str, str], List[str]] = collections.defaultdict(list)
  for module, targets in module_graph.items():
    for target in sorted(targets):
      a, b = package_of(module), package_of(target)
      if a != b:
        packages[a].add(b)
        why[(a, b)].append(f"{module} -> {target}")
  return packages, why


def _reachable(graph: Graph, start: str) -> Set[str]:
  seen: Set[str] = set()
  todo = [start]
  while todo:
    for nxt in graph.get(todo.pop(), ()):
      if nxt not in seen:
        seen.add(nxt)
        todo.append(nxt)
  return seen


def cycles(graph: Graph) -> List[List[str]]:
  """The graph's cycles: its strongly connected components of more than one node (or a node that
  imports itself), each sorted, in sorted order."""
  reach = {v: _reachable(graph, v) for v in graph}
  found = {tuple(sorted(w for w in reach[v] if v in reach.get(w, ()))) for v in graph
           if v in reach[v]}
  return sorted(list(c) for c in found)


def describe_cycles(graph: Graph, why: Mapping[Tuple[str, str], List[str]]) -> List[str]:
  """One line per cycle, then one per arrow in it, with the imports that make it (`why`)."""
  lines = []
  for cycle in cycles(graph):
    lines.append("cycle: " + ", ".join(cycle))
    lines += [f"  {a} -> {b}" + (f": {', '.join(why[(a, b)])}" if (a, b) in why else "")
              for a in cycle for b in sorted(graph[a]) if b in cycle]
  return lines


def levels(order: Sequence[Sequence[str]], binaries: Set[str]) -> Dict[str, int]:
  """node -> its level in `order` (0 = top); `BINARIES` stands for the modules in `binaries`."""
  found = {}
  for i, level in enumerate(order):
    for node in level:
      for name in (sorted(binaries) if node == BINARIES else [node]):
        found[name] = i
  return found


def upward_arrows(graph: Graph, level: Mapping[str, int]) -> List[Tuple[str, str]]:
  """(importer, imported) arrows that point up the order (to a lower level number)."""
  return sorted((a, b) for a, targets in graph.items() for b in targets if level[b] < level[a])


# ----------------------------------------------------------------------------------- the checker
def test_the_cycle_finder_finds_a_planted_cycle():
  planted = {"runtime": {"checkpoints", "data"}, "checkpoints": {"train_state", "runtime"},
             "train_state": set(), "data": set(), "eval": {"runtime"}}
  assert cycles(planted) == [["checkpoints", "runtime"]]
  why = {("runtime", "checkpoints"): ["runtime.loop -> checkpoints"],
         ("checkpoints", "runtime"): ["checkpoints.io -> runtime.state"]}
  assert describe_cycles(planted, why) == [
      "cycle: checkpoints, runtime",
      "  checkpoints -> runtime: checkpoints.io -> runtime.state",
      "  runtime -> checkpoints: runtime.loop -> checkpoints"]
  assert cycles({"a": {"a"}, "b": set()}) == [["a"]]
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}}) == [
      ["a", "b", "c"], ["d", "e"]]
  planted["checkpoints"] = {"train_state"}
  assert cycles(planted) == []


def test_the_order_check_finds_an_arrow_up():
  order = (("train",), ("runtime",), ("models", "flops"), ("data",))
  graph = {"train": {"runtime"}, "runtime": {"models"}, "models": {"data", "flops"},
           "flops": set(), "data": {"runtime"}}
  assert upward_arrows(graph, levels(order, set())) == [("data", "runtime")]
  assert levels(((BINARIES,), ("x",)), {"b1", "b2"}) == {"b1": 0, "b2": 0, "x": 1}


def test_package_of():
  assert package_of("flip_t5x.runtime.trainer") == "flip_t5x.runtime"
  assert package_of("flip_t5x.runtime") == "flip_t5x.runtime"
  assert package_of("flip_t5x.models") == "flip_t5x.models"
  assert package_of("flip_t5x") == "flip_t5x"
  assert package_of("tasks.zeroshot_seqio") == "tasks"


# --------------------------------------------------------------------------------- the product
def test_the_graph_sees_the_package(graph, module_graph, binaries):
  """The rules below are only as good as what they read: the layers and the binaries are found,
  and lazy imports inside functions count."""
  assert {"flip_t5x.network", "flip_t5x.layers", "flip_t5x.models", "tasks"} <= set(graph)
  assert {"flip_t5x.train", "flip_t5x.eval", "flip_t5x.predict"} <= binaries
  assert "flip_t5x.layers" in module_graph["flip_t5x.network"]
  assert "flip_t5x.runtime.t5x_interop" in module_graph["flip_t5x.runtime.gin_utils"]  # lazy


def test_no_package_cycle(module_graph):
  packages, why = collapse(module_graph)
  assert describe_cycles(packages, why) == []


def test_no_module_cycle(module_graph):
  assert describe_cycles(module_graph, {}) == []


def test_every_arrow_points_down_the_order(module_graph, binaries):
  packages, why = collapse(module_graph)
  level = levels(ORDER, binaries)
  assert sorted(set(packages) - set(level)) == []  # every package has its place
  assert sorted(set(level) - set(packages)) == []  # and the order names no package gone
  found = [f"{a} -> {b}: {', '.join(why[(a, b)])}"
           for a, b in upward_arrows(packages, level)]
  assert found == []


def _doc_name(node: str) -> str:
  """How docs/architecture.md names a node: `runtime/`, `models`, `flip_t5x/__init__`."""
  if node in (BINARIES, "flip_t5x"):
    return "binaries" if node == BINARIES else "`flip_t5x/__init__`"
  name = node.removeprefix("flip_t5x.")
  return f"`{name}/`" if os.path.isdir(os.path.join(h.ROOT, *node.split("."))) else f"`{name}`"


def test_the_docs_state_the_order():
  with open(os.path.join(h.ROOT, "docs", "architecture.md"), encoding="utf-8") as f:
    docs = f.read()
  stated = "\n".join(f"{i}. " + ", ".join(map(_doc_name, level))
                     for i, level in enumerate(ORDER, 1))
  assert stated in docs, stated


def test_the_t5x_interop_imports_no_flip_module(module_graph):
  """Interop in one direction: partitioning, utils, trainer and optimizers import it."""
  assert module_graph["flip_t5x.runtime.t5x_interop"] == set()


def _within(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(graph, importers, forbidden, exact=False):
  """(importer, imported) pairs where a module under `importers` imports one under `forbidden`."""
  def imports_from(module):
    return module in importers if exact else _within(module, importers)
  return sorted((module, target) for module, targets in graph.items() if imports_from(module)
                for target in targets if _within(target, forbidden))


def test_library_code_imports_no_binary(graph, binaries):
  library = {m for m in graph if m not in binaries}
  assert _violations(graph, library, binaries, exact=True) == []


def test_nothing_imports_scripts(graph):
  assert _violations(graph, list(graph), ("scripts",)) == []


def test_binaries_are_mains_over_the_library_not_over_each_other(graph, binaries):
  """A binary that imports another (train importing the eval binary) hides library code in a main."""
  found = [(module, target) for module in sorted(binaries) for target in sorted(graph[module])
           if target != module and _within(target, binaries - {module})]
  assert found == []


# The PyTorch side (the optional `torch` extra): only these modules may import torch or what needs
# it, so the core install (without the extra) works and stays as light as it was.
TORCH_SIDE = ("flip_t5x.pytorch", "flip_t5x.export_torch", "flip_t5x.clip_benchmark")
TORCH_PACKAGES = ("torch", "torchvision", "open_clip", "clip_benchmark", "safetensors")


def test_only_the_torch_side_imports_torch(graph):
  core = {m for m in graph if not _within(m, TORCH_SIDE)}
  assert {"flip_t5x.pytorch.model", "flip_t5x.export_torch"} <= set(graph) - core
  assert _violations(graph, core, TORCH_PACKAGES + TORCH_SIDE, exact=True) == []


@pytest.mark.e2e
def test_importing_the_core_loads_no_torch():
  """Every core module imported in one fresh process: neither they nor what they import (jax,
  TensorFlow, seqio, ...) load torch, whether or not the extra is installed."""
  core = [m for m, _ in _modules() if not _within(m, TORCH_SIDE)]
  code = ("import importlib, sys\n"
          f"for name in {core!r}:\n  importlib.import_module(name)\n"
          f"print(sorted(p for p in {TORCH_PACKAGES!r} if p in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=h.ROOT, env=h.env(),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == "[]"
  assert len(core) > 50  # the package, not an empty list
