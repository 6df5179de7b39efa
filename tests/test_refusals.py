"""Nothing silently accepted (issue 26 item 6): each of these is an error or a warning naming it.

  a misspelt binding of the eval entry point (`evaluate` lists t5x.eval's parameters, no **kwargs)
  a learned temperature (`logit_scale`) meeting a fixed-temperature model, or the reverse
  a gin file that sets a macro before including a file that sets it again
  a dangling link among `flip_t5x.predict --images=DIR`
"""
import glob
import inspect
import logging
import os

import gin
import numpy as np
import pytest

from flip_t5x import checkpoints
from flip_t5x import eval as flip_eval
from flip_t5x import predict
from flip_t5x import predictor as predictor_lib
from flip_t5x import train_state
from flip_t5x.checkpoints import importer
from flip_t5x.checkpoints import layout as layout_lib
from flip_t5x.checkpoints import release
from flip_t5x.data import vocabulary as vocabulary_lib
from flip_t5x.runtime import gin_utils
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import partitioning
import test_import_checkpoint as tic
import test_predictor
import test_train_helpers as h

ROOT = h.ROOT
FIXED = "network.FlipTwoTower.learn_temperature = False"  # the switch the messages name
# t5x/eval.py `evaluate` at t5x HEAD (read from the t5x checkout, not importable in CI).
T5X_EVALUATE_PARAMETERS = (
    "model", "dataset_cfg", "restore_checkpoint_cfg", "partitioner", "output_dir",
    "inference_evaluator_cls", "training_evaluator_cls", "summarize_config_fn",
    "train_state_initializer_cls", "train_eval_get_dataset_fn", "fallback_init_rng", "use_orbax")


# ------------------------------------------------------------------------------ (a) eval bindings
def test_evaluate_takes_t5x_evals_parameters_and_no_others():
  params = inspect.signature(flip_eval.evaluate).parameters
  assert set(T5X_EVALUATE_PARAMETERS) <= set(params)
  assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@pytest.mark.e2e
def test_misspelt_evaluate_binding_is_one_line_exit_2(tmp_path):
  out = tmp_path / "eval_out"
  proc = h.run_binary("eval", [
      "--gin_file=gin_configs/models/flip_tiny.gin", "--gin_file=gin_configs/runs/eval.gin",
      "--gin.MIXTURE_OR_TASK_NAME='flip_folder_zeroshot'",
      f"--gin.CHECKPOINT_PATH='{tmp_path}/model'", f"--gin.EVAL_OUTPUT_DIR='{out}'",
      # t5x.eval's own parameters still bind (upstream gin files set them) ...
      "--gin.__main__.evaluate.use_orbax=False", "--gin.__main__.evaluate.fallback_init_rng=0",
      # ... a misspelt one does not (it was swallowed by **kwargs, and the checkpoint ignored).
      f'--gin.__main__.evaluate.chekpoint_path="{tmp_path}/model"'], timeout=180)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  lines = proc.stderr.strip().splitlines()
  errors = [line for line in lines if line.startswith("flip_t5x.eval: ")]
  assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]  # gin's location too
  assert errors[0].startswith("flip_t5x.eval: configuration error: in gin binding "
                              "'__main__.evaluate.chekpoint_path")
  assert "doesn't have a parameter named 'chekpoint_path'" in errors[0]
  assert not out.exists()


# ------------------------------------------------------------------------------ (b) temperature
def _model(*bindings):
  gin.clear_config()
  try:
    return gin_utils.parse_gin_flags_for_model([ROOT], [tic.TINY_GIN], list(bindings),
                                               finalize_config=False)
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def temperature(tmp_path_factory):
  """The tiny model learning its temperature and with it fixed; checkpoints of both kinds, in the
  official release's layout and in ours (imported from it)."""
  tmp = tmp_path_factory.mktemp("temperature")
  learned, fixed = _model(), _model(FIXED)
  assert learned.module.learn_temperature and not fixed.module.learn_temperature
  target = tic.official_tree(np.random.default_rng(0), **tic.TINY)  # logit_scale 2.5
  ckpts = {"official_learned": str(tmp / "official_learned"),
           "official_fixed": str(tmp / "official_fixed")}
  tic.write_t5x_checkpoint(ckpts["official_learned"], target)
  tic.write_t5x_checkpoint(ckpts["official_fixed"],
                           {k: v for k, v in target.items() if k != release.LOGIT_SCALE})
  for kind, model in (("learned", learned), ("fixed", fixed)):
    importer.import_checkpoint(ckpts[f"official_{kind}"], model, str(tmp / f"ours_{kind}"))
    ckpts[f"ours_{kind}"] = str(tmp / f"ours_{kind}")
  return dict(learned=learned, fixed=fixed, ckpts=ckpts, tmp=tmp)


def _flat(params):
  return {k: np.asarray(v) for k, v in layout_lib.flat(params).items()}


@pytest.mark.parametrize("layout", ["official", "ours"])
def test_learned_temperature_into_fixed_model(temperature, layout, caplog):
  path, fixed = temperature["ckpts"][f"{layout}_learned"], temperature["fixed"]
  # Import writes a checkpoint once, for good: it loses nothing, so it refuses, in one line that
  # names the parameter and the switch (not "pass the gin file of the checkpoint's size").
  with pytest.raises((release.CheckpointMismatchError, checkpoints.CheckpointShapeError)) as e:
    importer.import_checkpoint(path, fixed, str(temperature["tmp"] / f"refused_{layout}"))
  message = str(e.value)
  assert "\n" not in message and "logit_scale" in message, message
  assert "network.FlipTwoTower.learn_temperature = True" in message and "size" not in message
  assert not (temperature["tmp"] / f"refused_{layout}").exists()
  # Loading it (eval, predict, INITIAL_CHECKPOINT_PATH) leaves it out, as the official code's
  # partial restore does, and says so: the checkpoint's temperature, the switch.
  with caplog.at_level(logging.WARNING):
    params = checkpoints.load_params(path, fixed)
  warned = [r.getMessage() for r in caplog.records if "logit_scale" in r.getMessage()]
  assert len(warned) == 1, [r.getMessage() for r in caplog.records]
  assert f"temperature {np.exp(-2.5):.4g}" in warned[0] and "learn_temperature" in warned[0]
  kept = _flat(checkpoints.load_params(path, temperature["learned"]))
  assert float(kept.pop("logit_scale")) == 2.5
  got = _flat(params)
  assert sorted(got) == sorted(kept)
  for k in kept:
    np.testing.assert_array_equal(got[k], kept[k], err_msg=k)
  # Scores use the fixed temperature the model was configured with (1 / 0.01).
  assert predictor_lib.FlipPredictor(fixed, params).logit_scale == pytest.approx(100.0)


@pytest.mark.parametrize("layout", ["official", "ours"])
def test_fixed_temperature_into_learning_model(temperature, layout):
  path, learned = temperature["ckpts"][f"{layout}_fixed"], temperature["learned"]
  # The model would need a temperature the checkpoint does not have: refused everywhere.
  for load in (lambda: checkpoints.load_params(path, learned),
               lambda: importer.import_checkpoint(path, learned, None)):
    with pytest.raises((release.CheckpointMismatchError, checkpoints.CheckpointShapeError)) as e:
      load()
    message = str(e.value)
    assert "\n" not in message and "has no logit_scale" in message, message
    assert FIXED in message
  # The switch the message names is the one that fits it.
  assert "logit_scale" not in checkpoints.load_params(path, _model(FIXED))


@pytest.mark.slow
def test_resume_with_the_temperature_switched_is_refused(temperature):
  """Resuming a MODEL_DIR after flipping learn_temperature: orbax's partial restore dropped the
  learned logit_scale without a word (and left it unread the other way)."""
  tx = optimizers.unwrap(optimizers.adamw(lambda step: 1e-3))
  layouts = {kind: train_state.StateLayout(temperature[kind], tx, partitioning.PjitPartitioner(),
                                           temperature[kind].input_shapes(4))
             for kind in ("learned", "fixed")}
  for saved, resumed, expected in (("learned", "fixed", "learn_temperature = True"),
                                   ("fixed", "learned", FIXED)):
    model_dir = str(temperature["tmp"] / f"resume_{saved}")
    params = checkpoints.load_params(temperature["ckpts"][f"ours_{saved}"], temperature[saved])
    ckpt = checkpoints.TrainCheckpointer(model_dir, layouts[saved], enable_async=False)
    ckpt.save(layouts[saved].from_params(params, step=4), {"step": 4, "seed": 1})
    ckpt.close()
    assert checkpoints.TrainCheckpointer(model_dir, layouts[saved]).restore(4)[0].params.keys() \
        == params.keys()
    with pytest.raises(checkpoints.CheckpointShapeError, match=expected) as e:
      checkpoints.TrainCheckpointer(model_dir, layouts[resumed]).restore(4)
    assert "logit_scale" in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------ (c) gin includes
def _write(path, *lines):
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def test_macro_set_before_an_include_that_sets_it_again_warns(tmp_path, clean_gin_and_counters,
                                                              caplog):
  leaf = _write(tmp_path / "leaf.gin", "VOCAB_FILE = None", "TEXT_LENGTH = 16")
  _write(tmp_path / "mid.gin", f"include '{leaf}'")  # reached through another file
  top = _write(tmp_path / "top.gin", "VOCAB_FILE = 'mine.txt'", "TEXT_LENGTH = 8",
               "include 'mid.gin'",  # found on the search path, as gin finds it
               "TEXT_LENGTH = 32")  # set again after the include: this one stands, no warning
  with caplog.at_level(logging.WARNING):
    gin_utils.parse_gin_flags([str(tmp_path)], [top], [], finalize_config=False)
  assert gin.query_parameter("VOCAB_FILE/macro.value") is None  # the value gin lost
  assert gin.query_parameter("TEXT_LENGTH/macro.value") == 32
  warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("gin: ")]
  assert warned == [f"gin: VOCAB_FILE set at {top}:1 is lost: the include at {top}:3 sets it "
                    f"again ({leaf}:1) and gin parses an include where it stands; set VOCAB_FILE "
                    "after the include"]


def test_overriding_an_included_default_stays_silent(tmp_path):
  base = _write(tmp_path / "base.gin", "VOCAB_FILE = None", "f.x = 1")
  size = _write(tmp_path / "size.gin", f"include '{base}'", "VOCAB_FILE = 'size.txt'",
                "f.x = 2")  # after the include: the layering every size file does
  later = _write(tmp_path / "later.gin", "VOCAB_FILE = 'later.txt'")
  again = _write(tmp_path / "again.gin", "VOCAB_FILE = 'x.txt'", f"include '{later}'",
                 "VOCAB_FILE = 'y.txt'")  # lost, but set again after the include
  assert gin_utils.shadowed_bindings([str(tmp_path)], [size, later, again]) == []
  # A binding (not only a macro) before the include is reported, in its scope.
  before = _write(tmp_path / "before.gin", "s/f.x = 3", "f.x = 4", f"include '{size}'")
  lost = gin_utils.shadowed_bindings([str(tmp_path)], [before])
  assert len(lost) == 1 and lost[0].startswith(f"gin: f.x set at {before}:2 is lost")
  assert f"({size}:3)" in lost[0]


def test_shipped_gin_files_set_nothing_before_their_includes():
  shipped = sorted(glob.glob(os.path.join(ROOT, "gin_configs", "**", "*.gin"), recursive=True))
  assert len(shipped) > 10
  assert gin_utils.shadowed_bindings([ROOT], shipped) == []


# ------------------------------------------------------------------------------ (d) predict
@pytest.mark.slow
def test_predict_reports_a_dangling_link_like_an_unreadable_file(temperature, tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  test_predictor.make_image(str(images / "red.png"), (220, 20, 20))
  (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
  os.symlink(str(tmp_path / "moved_away.png"), str(images / "gone.png"))
  (images / "album.png").mkdir()  # a directory, however named, is no image
  vocab_file = _write(tmp_path / "vocab.txt", *test_predictor.VOCAB)
  model = temperature["learned"]
  params = checkpoints.load_params(temperature["ckpts"]["ours_learned"], model)
  pred = predictor_lib.FlipPredictor(model, params,
                                     vocabulary_lib.WordPieceVocabulary(vocab_file), batch_size=2)
  # What `flip_t5x.predict --images=DIR --labels=cat,dog` does with DIR.
  paths = predict.list_images([str(images)])
  assert [os.path.basename(p) for p in paths] == ["broken.jpg", "gone.png", "red.png"]
  ok, z, errors = predict.embed_files(pred, paths)
  assert ok == [2] and z.shape == (1, model.module.embed_dim)
  labels = ["cat", "dog"]
  probs = pred.probabilities(z, pred.class_embeddings(labels, ["{}"]))
  rows = predict.format_labels(paths, ok, probs, errors, labels, 2, "table")
  gone = [r for r in rows if "gone.png" in r]
  assert len(gone) == 1 and "ERROR: cannot read file: dangling link to" in gone[0], rows
  assert str(tmp_path / "moved_away.png") in gone[0]
  assert any("broken.jpg" in r and "ERROR" in r for r in rows)
