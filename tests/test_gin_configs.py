"""Every shipped gin file parses and builds its model from shapes (nothing allocated).

The files are found by globbing gin_configs/, so a new or moved file cannot escape. A file that
binds MODEL (a model size, an experiment, an eval file, a demo stage) is parsed alone; a run file
that does not is layered on the tiny model, as users layer run files on a model file. Experiments
are also parsed with runs/unmasked_tuning.gin, as the README's tuning command does. Data paths and
MODEL_DIR stay unset: parsing must not need them (the recipe values are test_recipes.py's job).
"""
import ast
import glob
import os
import sys

import gin
import jax
import pytest

from flip_t5x import eval as flip_eval
from flip_t5x import model_info
from flip_t5x import models
from test_train_helpers import ROOT

TINY = "gin_configs/models/flip_tiny.gin"
TUNING = "gin_configs/runs/unmasked_tuning.gin"
ALL_FILES = sorted(os.path.relpath(p, ROOT) for p in
                   glob.glob(os.path.join(ROOT, "gin_configs", "**", "*.gin"), recursive=True))


def binds_model(path: str) -> bool:
  """Whether the file (with what it includes) binds MODEL."""
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    text = f.read()
  if any(line.startswith("MODEL =") for line in text.splitlines()):
    return True
  includes = [line.split("'")[1] for line in text.splitlines() if line.startswith("include '")]
  return any(binds_model(i) for i in includes)


def compositions():
  """(files...) to parse together, covering every shipped file."""
  out = []
  for path in ALL_FILES:
    out.append((path,) if binds_model(path) else (TINY, path))
    if path.startswith("gin_configs/flip_vit_"):
      out.append((path, TUNING))
  return out


def user_bindings(files):
  """What a user sets on the command line for these files (their headers say so)."""
  bindings = []
  if TUNING in files:
    bindings.append("INITIAL_CHECKPOINT_PATH = '/nonexistent'")
  if files[0] == TINY:  # a bare run file: the run length is the user's (experiments set it)
    bindings.append("TRAIN_STEPS = 10")
  if any(f.startswith("gin_configs/demo/") for f in files):
    bindings.append("VOCAB_SIZE = 1000")  # scripts/demo.sh: the size of the vocabulary it built
  return bindings


@pytest.fixture(autouse=True)
def binaries_as_main():
  """Run files call `train_script.train` / `eval_script.evaluate` (t5x's `__main__` names)."""
  main = sys.modules["__main__"]
  had_evaluate = hasattr(main, "evaluate")
  main.evaluate = flip_eval.evaluate
  gin.clear_config()
  yield
  gin.clear_config()
  if not had_evaluate:
    del main.evaluate


def test_every_file_is_covered():
  assert len(ALL_FILES) >= 15
  covered = {f for files in compositions() for f in files}
  assert covered == set(ALL_FILES)


def full_size(files) -> bool:
  """A composition without the tiny or the demo's model: tracing it takes seconds (slow layer)."""
  return not any(f == TINY or f.startswith("gin_configs/demo/") for f in files)


@pytest.mark.parametrize("files", [
    pytest.param(files, marks=pytest.mark.slow) if full_size(files) else files
    for files in compositions()], ids=lambda files: "+".join(
        os.path.relpath(f, "gin_configs") for f in files))
def test_parses_and_builds_the_model_from_shapes(files):
  bindings = user_bindings(files)
  model = model_info.configured_model(["."], list(files), bindings)
  assert isinstance(model, models.FlipModel)
  params = model_info.param_shapes(model)  # jax.eval_shape: shapes only
  leaves = jax.tree_util.tree_leaves(params)
  assert leaves and all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
  assert {"image_tower", "text_tower"} <= set(params)
  if TUNING in files:
    assert model.mask_ratio == 0.0


def test_no_library_code_looks_gin_up_by_name():
  """Values reach flip_t5x/ and tasks/ by binding (e.g. tasks.gin's
  `tasks.TaskConfig.train_data_pattern = %TRAIN_DATA_PATTERN`), never by `gin.query_parameter`."""
  files = [p for d in ("flip_t5x", "tasks")
           for p in glob.glob(os.path.join(ROOT, d, "**", "*.py"), recursive=True)]
  assert len(files) > 20
  lookups = []
  for path in files:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    lookups += [f"{os.path.relpath(path, ROOT)}:{node.lineno}" for node in ast.walk(tree)
                if isinstance(node, ast.Attribute) and node.attr == "query_parameter"]
  assert not lookups


def test_data_and_evaluation_take_arguments_not_gin():
  """flip_t5x/data and flip_t5x/evaluation import no gin: their functions and classes take the
  values the edges (the binaries, `tasks.TaskConfig`) read from gin."""
  files = [p for d in ("data", "evaluation")
           for p in glob.glob(os.path.join(ROOT, "flip_t5x", d, "*.py"))]
  assert len(files) > 10
  importers = []
  for path in files:
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    if any(name == "gin" or name.startswith("gin.") for name in names):
      importers.append(os.path.relpath(path, ROOT))
  assert importers == []
