"""The house's import directions hold (read from the source with `ast`, imports inside functions too).

Arrows point down only: binaries -> library; evaluation/runtime/checkpoints -> models -> network ->
layers/backends; tasks -> data. A layer that imports upward (the network reading the runtime, data
code reading the model, library code importing a binary) is how a package grows back into a knot,
so each rule is a failing test rather than a convention.
"""
import ast
import os
import re
import subprocess
import sys
from typing import Dict, Iterator, Set, Tuple

import pytest

import test_train_helpers as h

PACKAGES = ("flip_t5x", "tasks", "gin_configs")
BINARY_MARK = re.compile(r'^if __name__ == "__main__":', re.M)


def _modules() -> Iterator[Tuple[str, str]]:
  """(dotted module name, path) of every Python module of the product."""
  for package in PACKAGES:
    for folder, _, files in os.walk(os.path.join(h.ROOT, package)):
      for name in sorted(files):
        if name.endswith(".py"):
          path = os.path.join(folder, name)
          dotted = os.path.relpath(path, h.ROOT)[:-3].replace(os.sep, ".")
          yield dotted.removesuffix(".__init__"), path


def _imports(path: str, dotted: str) -> Set[str]:
  """Modules (or module.attribute) that `path` imports, relative imports resolved."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), filename=path)
  package = dotted if path.endswith("__init__.py") else dotted.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      found.add(base)
      found.update(f"{base}.{alias.name}" for alias in node.names)
  return found


@pytest.fixture(scope="module")
def graph() -> Dict[str, Set[str]]:
  return {dotted: _imports(path, dotted) for dotted, path in _modules()}


@pytest.fixture(scope="module")
def binaries() -> Set[str]:
  found = set()
  for dotted, path in _modules():
    with open(path, encoding="utf-8") as f:
      if BINARY_MARK.search(f.read()):
        found.add(dotted)
  return found


def _within(name: str, prefixes) -> bool:
  return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(graph, importers, forbidden, exact=False):
  """(importer, imported) pairs where a module under `importers` imports one under `forbidden`."""
  def imports_from(module):
    return module in importers if exact else _within(module, importers)
  return sorted((module, target) for module, targets in graph.items() if imports_from(module)
                for target in targets if _within(target, forbidden))


def test_the_graph_sees_the_package(graph, binaries):
  """The rules below are only as good as what they read: the layers and the binaries are found."""
  assert {"flip_t5x.network", "flip_t5x.layers", "flip_t5x.models", "tasks"} <= set(graph)
  assert {"flip_t5x.train", "flip_t5x.eval", "flip_t5x.predict"} <= binaries
  assert "flip_t5x.layers" in graph["flip_t5x.network"] or any(
      t.startswith("flip_t5x.layers") for t in graph["flip_t5x.network"])


def test_network_and_layers_import_nothing_above_them(graph, binaries):
  bottom = ("flip_t5x.layers", "flip_t5x.backends", "flip_t5x.network")
  above = ("flip_t5x.runtime", "flip_t5x.data", "flip_t5x.checkpoints", "flip_t5x.evaluation",
           "flip_t5x.models", "flip_t5x.predictor", "tasks", *binaries)
  assert _violations(graph, bottom, above) == []


def test_data_imports_neither_the_network_nor_the_runtime(graph, binaries):
  model_side = ("flip_t5x.layers", "flip_t5x.backends", "flip_t5x.network", "flip_t5x.models",
                "flip_t5x.runtime", "flip_t5x.checkpoints", "flip_t5x.evaluation", "tasks",
                *binaries)
  assert _violations(graph, ("flip_t5x.data",), model_side) == []


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
