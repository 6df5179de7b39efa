"""flip_t5x.eval on the tiny model: brute-force agreement, the seqio (t5x.eval) path, the binary.

Data: a 6-class folder tree for `flip_folder_zeroshot` and one img2dataset TFRecord shard of
captioned images for `flip_img2dataset_retrieval`, plus a small WordPiece vocabulary; parameters
are the tiny model's initialisation saved as a params-only checkpoint.

t5x.eval is not installed here; its path is played in-process by the pieces it is made of: its
`evaluate` signature configured by the same gin files (`t5x_eval_arguments`), seqio's Evaluator
built as its InferenceEvaluator builds it (`t5x_evaluator`) and its infer function
(`_predict_with_aux_fn`). scripts/check_t5x_parity.sh runs the real one.
"""
import contextlib
import io
import json
import os
import subprocess
import sys

import gin
import jax
import numpy as np
from PIL import Image
import pytest
import seqio
import tensorflow as tf

import tasks
from tasks import zeroshot_seqio
from flip_t5x import eval as flip_eval
from flip_t5x.evaluation import EvalError
from flip_t5x.evaluation import retrieval as retrieval_eval
from flip_t5x.evaluation import zeroshot as zeroshot_eval
from flip_t5x.data import shards
from flip_t5x.data import prompts
from flip_t5x import checkpoints
from flip_t5x.runtime import gin_utils
import test_eval_metrics
import test_train_helpers as h
from test_train_helpers import ROOT

TINY = "gin_configs/models/flip_tiny.gin"
LENGTHS = {"image": 32, "targets": 16}
CLASSES = ("cat", "dog", "red car", "blue sky", "green tree", "yellow sun")
CAPTIONS = tuple(f"a photo of a {c} number {i}" for i in range(2) for c in CLASSES)


def _image(rng, channel, size=(40, 48)):
  a = (rng.rand(*size, 3) * 255).astype(np.uint8)
  a[..., channel] = 220
  return Image.fromarray(a)


def _png(img):
  buf = io.BytesIO()
  img.save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  d = tmp_path_factory.mktemp("eval")
  words = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", ".", ","}
  for text in list(prompts.templates("7")) + list(CLASSES) + list(CAPTIONS):
    words.update(text.replace("{}", " ").replace(".", " ").replace(",", " ").lower().split())
  special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
  (d / "vocab.txt").write_text("\n".join(special + sorted(words - set(special))) + "\n")
  rng = np.random.RandomState(0)
  for i, c in enumerate(CLASSES):
    folder = d / "zeroshot" / c.replace(" ", "_")
    folder.mkdir(parents=True)
    for j in range(2):
      _image(rng, i % 3).save(folder / f"{j}.png")
  (d / "shards").mkdir()
  with tf.io.TFRecordWriter(str(d / "shards" / "eval-00000-of-00001.tfrecord")) as w:
    for k, caption in enumerate(CAPTIONS):
      img = _image(rng, k % 3, size=(36, 36))
      w.write(shards.make_example(f"{k:05d}", _png(img), caption, 36, 36)
              .SerializeToString())
  model = h.gin_model()
  params = model.get_initial_variables(
      jax.random.PRNGKey(0), {"images": (1, 32, 32, 3), "texts": (1, 16)})["params"]
  ckpt = checkpoints.save_params(params, str(d / "model"), step=7)
  _bind_data(d)
  yield dict(dir=d, model=model, params=params, ckpt=ckpt)
  gin.clear_config()


def _bind_data(d):
  """Where the tasks read the fixture's data (in-process tests; the gin files bind the same)."""
  gin.clear_config()
  gin.bind_parameter("tasks.TaskConfig.vocab_file", str(d / "vocab.txt"))
  gin.bind_parameter("tasks.TaskConfig.zeroshot_folder", str(d / "zeroshot"))
  gin.bind_parameter("tasks.TaskConfig.retrieval_data_pattern",
                     str(d / "shards" / "*.tfrecord"))


def _gin_file(d, name, lines):
  path = d / name
  path.write_text("\n".join(lines) + "\n")
  return str(path)


def _run_binary(d, gin_file, *bindings):
  cmd = [sys.executable, "-m", "flip_t5x.eval", f"--gin_file={gin_file}", *bindings]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


@pytest.fixture(scope="module")
def binaries(setup):
  """Starts the binary runs first (in parallel); the in-process tests run meanwhile."""
  d = setup["dir"]
  common = ["include 'gin_configs/models/flip_tiny.gin'", f"VOCAB_FILE = '{d}/vocab.txt'"]
  zs = _gin_file(d, "zs.gin", common + [
      "include 'gin_configs/runs/eval.gin'", "MIXTURE_OR_TASK_NAME = 'flip_folder_zeroshot'",
      f"ZEROSHOT_FOLDER = '{d}/zeroshot'", "utils.DatasetConfig.batch_size = 4"])
  ret = _gin_file(d, "ret.gin", common + [
      "include 'gin_configs/runs/eval_retrieval.gin'",
      f"RETRIEVAL_DATA_PATTERN = '{d}/shards/*.tfrecord'", "utils.DatasetConfig.batch_size = 4",
      "EVAL_MAX_EXAMPLES = 10"])
  ckpt = f'--gin.CHECKPOINT_PATH="{setup["ckpt"]}"'
  procs = {
      "zeroshot": _run_binary(d, zs, ckpt, f'--gin.EVAL_OUTPUT_DIR="{d}/out_zs"'),
      "retrieval": _run_binary(d, ret, f'--gin.CHECKPOINT_PATH="{d}/model"',
                               f'--gin.EVAL_OUTPUT_DIR="{d}/out_ret"'),
      # The ImageNet eval file on a model file parses and finds its task; the checkpoint is missing.
      "missing_ckpt": _run_binary(d, TINY, "--gin_file=gin_configs/runs/eval_zeroshot_imagenet.gin",
                                  f'--gin.CHECKPOINT_PATH="{d}/nope"',
                                  f'--gin.EVAL_OUTPUT_DIR="{d}/out_bad"'),
      # A string value without gin quotes, the classic command-line mistake.
      "bad_gin": _run_binary(d, zs, ckpt, f'--gin.EVAL_OUTPUT_DIR="{d}/out_bad"',
                             "--gin.evaluate.mode=zeroshot"),
  }
  yield procs
  for p in procs.values():
    if p.poll() is None:
      p.kill()


def _finish(proc):
  out, err = proc.communicate(timeout=240)
  return proc.returncode, out, err


def _bruteforce_class_embeddings(model, params, class_names, templates):
  ids = prompts.prompt_token_ids(class_names, templates, tasks.output_features()["targets"]
                                  .vocabulary, LENGTHS["targets"])
  emb = np.asarray(model.encode_texts(params, ids.reshape(-1, LENGTHS["targets"])))
  emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  emb = emb.reshape(len(class_names), len(templates), -1).mean(axis=1)
  return emb / np.linalg.norm(emb, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def own_zeroshot(setup):
  """flip_t5x.eval's in-process zero-shot result (computed once: building the dataset is slow)."""
  return zeroshot_eval.zeroshot_evaluate(
      setup["model"], setup["params"], task_name="flip_folder_zeroshot", split="validation",
      feature_lengths=LENGTHS, batch_size=5, templates=prompts.templates("7"))


def _predict_with_aux_fn(model, params, batch_size=4):
  step = jax.jit(model.predict_batch_with_aux)

  def predict_with_aux(ds, model_feature_shapes=None):
    # Like t5x.utils.get_infer_fn: (index, prediction) pairs and per-example aux lists.
    del model_feature_shapes
    outputs, aux = [], {}
    for index, batch in ds.batch(batch_size).as_numpy_iterator():
      preds, batch_aux = step(params, {"images": batch["images"], "texts": batch["texts"]})
      outputs += list(zip(index.tolist(), np.asarray(preds).tolist()))
      for k, v in batch_aux.items():
        aux.setdefault(k, []).extend(np.asarray(v).tolist())
    return outputs, aux

  return predict_with_aux


def _t5x_evaluate(*, model, dataset_cfg, restore_checkpoint_cfg, partitioner, output_dir,
                  inference_evaluator_cls=seqio.Evaluator, training_evaluator_cls=None,
                  summarize_config_fn=None, train_state_initializer_cls=None,
                  train_eval_get_dataset_fn=None, fallback_init_rng=None, use_orbax=True):
  """t5x.eval's `evaluate` parameters (t5x HEAD): a binding it lacks is a gin error, as there."""
  del partitioner, training_evaluator_cls, summarize_config_fn, train_state_initializer_cls
  del train_eval_get_dataset_fn, fallback_init_rng, use_orbax
  return dict(model=model, dataset_cfg=dataset_cfg, restore_checkpoint_cfg=restore_checkpoint_cfg,
              output_dir=output_dir, evaluator_cls=inference_evaluator_cls)


def t5x_eval_arguments(gin_files, gin_bindings):
  """What t5x.eval's `evaluate` gets from these --gin_file / --gin.NAME=VALUE flags.

  As t5x.eval's main: `evaluate` made configurable under `__main__` (the gin files'
  `eval_script.evaluate`), then the files and bindings parsed and the config finalized.
  """
  main = sys.modules["__main__"]
  saved = main.__dict__.get("evaluate")
  main.evaluate = _t5x_evaluate
  try:
    configured = gin.configurable(_t5x_evaluate)
    gin.clear_config()
    gin_utils.parse_gin_flags(["."], gin_files, gin_bindings)
    return configured()
  finally:
    if saved is None:
      del main.evaluate
    else:
      main.evaluate = saved


def t5x_evaluator(args):
  """seqio's Evaluator as t5x.eval's InferenceEvaluator builds it from `evaluate`'s arguments."""
  cfg, model = args["dataset_cfg"], args["model"]
  return args["evaluator_cls"](
      mixture_or_task_name=cfg.mixture_or_task_name,
      feature_converter=model.FEATURE_CONVERTER_CLS(pack=False), eval_split=cfg.split,
      use_cached=cfg.use_cached, seed=cfg.seed, sequence_length=cfg.task_feature_lengths,
      use_memory_cache=cfg.use_memory_cache,
      log_dir=os.path.join(args["output_dir"], "inference_eval"))


def t5x_metrics(args, evaluator):
  """The task's metrics as t5x.eval computes them, on the checkpoint its restore config names."""
  cfg, model = args["dataset_cfg"], args["model"]
  path = flip_eval.resolve_checkpoint(args["restore_checkpoint_cfg"])
  params = checkpoints.load_params(path, model)
  metrics, _ = evaluator.evaluate(
      compute_metrics=True, step=checkpoints.checkpoint_step(path),
      predict_with_aux_fn=_predict_with_aux_fn(model, params, cfg.batch_size))
  evaluator.close()
  return metrics.result()[cfg.mixture_or_task_name]


@contextlib.contextmanager
def _t5x_eval_config(setup, run_file, *bindings):
  """t5x.eval's arguments for the tiny model + `run_file` on the fixture's data and checkpoint;
  the gin config stays in force while the block builds datasets, then the fixture's returns."""
  d = setup["dir"]
  try:
    yield t5x_eval_arguments([TINY, run_file], [
        f"CHECKPOINT_PATH = '{setup['ckpt']}'", f"EVAL_OUTPUT_DIR = '{d}/t5x_eval'",
        f"VOCAB_FILE = '{d}/vocab.txt'", f"ZEROSHOT_FOLDER = '{d}/zeroshot'",
        f"RETRIEVAL_DATA_PATTERN = '{d}/shards/*.tfrecord'", *bindings])
  finally:
    _bind_data(d)


@pytest.mark.e2e
def test_zeroshot_seqio_path_and_bruteforce_agree(setup, binaries, own_zeroshot):
  """Own path == seqio.Evaluator on the `_seqio` task (what t5x.eval runs) == brute force."""
  model, params = setup["model"], setup["params"]
  names = zeroshot_seqio.class_names("flip_folder_zeroshot")
  assert names == sorted(CLASSES)  # labels follow the sorted folder names
  templates = prompts.templates("7")
  assert own_zeroshot["num_examples"] == 12
  assert own_zeroshot["num_classes"] == 6 and own_zeroshot["num_templates"] == 7

  # t5x.eval with runs/eval.gin: the lengths it binds are the model's, and the numbers are ours.
  with _t5x_eval_config(setup, "gin_configs/runs/eval.gin",
                        "MIXTURE_OR_TASK_NAME = 'flip_folder_zeroshot_seqio'") as args:
    assert args["dataset_cfg"].task_feature_lengths == LENGTHS
    evaluator = t5x_evaluator(args)
    rows = list(evaluator.cached_task_datasets["flip_folder_zeroshot_seqio"].as_numpy_iterator())
    assert len(rows) == 6 * 7 + 12  # every prompt once, then the images
    assert all(r["is_prompt"] for r in rows[:42]) and not any(r["is_prompt"] for r in rows[42:])
    got = t5x_metrics(args, evaluator)
  for k in ("top1", "top5", "num_examples", "num_classes"):
    assert got[k] == pytest.approx(own_zeroshot[k]), k
  logged = (setup["dir"] / "t5x_eval" / "inference_eval" /
            "flip_folder_zeroshot_seqio-metrics.jsonl").read_text()
  assert json.loads(logged.splitlines()[-1])["top1"] == pytest.approx(own_zeroshot["top1"])

  # Brute force: unbatched, unjitted towers and plain numpy ranking on the same images.
  vocab = tasks.output_features()["targets"].vocabulary
  ids = prompts.prompt_token_ids(names, templates, vocab, LENGTHS["targets"])
  emb = np.asarray(model.encode_texts(params, ids.reshape(-1, LENGTHS["targets"])))
  emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  emb = emb.reshape(len(names), len(templates), -1).mean(axis=1)
  class_emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
  np.testing.assert_allclose(
      zeroshot_eval.model_class_embeddings(model, params, names, templates, vocab,
                                           LENGTHS["targets"], batch_size=8), class_emb, atol=1e-5)
  images = np.stack([r["image"] for r in rows[42:]])
  labels = np.array([r["label"] for r in rows[42:]])
  img = np.asarray(model.encode_images(params, images))
  sims = (img / np.linalg.norm(img, axis=-1, keepdims=True)) @ class_emb.T
  rank = np.array([(sims[i] > sims[i, labels[i]]).sum() for i in range(len(labels))])
  assert own_zeroshot["top1"] == pytest.approx(100.0 * np.mean(rank < 1))
  assert own_zeroshot["top5"] == pytest.approx(100.0 * np.mean(rank < 5))
  per_class = {names[c]: (100.0 * np.mean(rank[labels == c] < 1), int(np.sum(labels == c)))
               for c in np.unique(labels)}
  worst = own_zeroshot["worst_classes"]
  assert len(worst) == 5 and [w["top1"] for w in worst] == sorted(w["top1"] for w in worst)
  for w in worst:
    assert (w["top1"], w["num_examples"]) == (pytest.approx(per_class[w["class"]][0]),
                                             per_class[w["class"]][1])
  assert worst[-1]["top1"] <= min(v[0] for k, v in per_class.items()
                                  if k not in {w["class"] for w in worst})


@pytest.mark.slow
def test_retrieval_seqio_path_agrees(setup):
  """seqio.Evaluator on the retrieval task under runs/eval_retrieval.gin == flip_t5x.eval's R@k."""
  own = retrieval_eval.retrieval_evaluate(
      setup["model"], setup["params"], task_name=zeroshot_seqio.RETRIEVAL_TASK, split="test",
      feature_lengths=LENGTHS, batch_size=4)
  with _t5x_eval_config(setup, "gin_configs/runs/eval_retrieval.gin") as args:
    assert args["dataset_cfg"].task_feature_lengths == LENGTHS
    assert args["dataset_cfg"].mixture_or_task_name == zeroshot_seqio.RETRIEVAL_TASK
    got = t5x_metrics(args, t5x_evaluator(args))
  recalls = {f"{d}/recall@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
  assert set(got) == recalls | {"num_examples"} and got["num_examples"] == 12
  assert own["num_examples"] == 12
  for k in recalls:
    assert got[k] == pytest.approx(own[k]), k


@pytest.mark.parametrize("run_file, task", [
    ("gin_configs/runs/eval.gin", "flip_folder_zeroshot_seqio"),
    ("gin_configs/runs/eval_retrieval.gin", zeroshot_seqio.RETRIEVAL_TASK)])
@pytest.mark.slow
def test_t5x_eval_without_lengths_refuses(setup, run_file, task):
  """TASK_FEATURE_LENGTHS = None: seqio would infer lengths from the data; one line instead."""
  with _t5x_eval_config(setup, run_file, f"MIXTURE_OR_TASK_NAME = '{task}'",
                        "TASK_FEATURE_LENGTHS = None") as args:
    assert args["dataset_cfg"].task_feature_lengths is None
    with pytest.raises(ValueError, match="TASK_FEATURE_LENGTHS") as e:
      t5x_metrics(args, t5x_evaluator(args))
  assert "TASK_FEATURE_LENGTHS" in str(e.value).splitlines()[0]  # gin appends where it was called


@pytest.mark.e2e
def test_bad_inputs_in_process(setup, binaries):
  model = setup["model"]

  class Cfg:
    mixture_or_task_name = "flip_folder_zeroshot"
    task_feature_lengths = LENGTHS
    split = "validation"
    batch_size = 4
    module = None

  out = str(setup["dir"] / "out_inproc")
  with pytest.raises(EvalError, match="Checkpoint not found"):
    flip_eval.evaluate(model=model, dataset_cfg=Cfg, output_dir=out,
                       checkpoint_path=str(setup["dir"] / "missing"))
  Cfg.mixture_or_task_name = "flip_folder_zeroshott"
  with pytest.raises(EvalError, match="flip_folder_zeroshot"):
    flip_eval.evaluate(model=model, dataset_cfg=Cfg, output_dir=out, checkpoint_path=setup["ckpt"])
  with pytest.raises(EvalError, match="mode"):
    flip_eval.evaluate(model=model, dataset_cfg=Cfg, output_dir=out,
                       checkpoint_path=setup["ckpt"], mode="bogus")
  # The options come as an argument (the binary's: eval_options as gin configured it); a value
  # given to evaluate itself wins.
  with pytest.raises(EvalError, match="got 'from_options'"):
    flip_eval.evaluate(model=model, dataset_cfg=Cfg, output_dir=out, checkpoint_path=setup["ckpt"],
                       options=flip_eval.eval_options(mode="from_options"))
  with pytest.raises(EvalError, match="got 'given'"):
    flip_eval.evaluate(model=model, dataset_cfg=Cfg, output_dir=out, checkpoint_path=setup["ckpt"],
                       mode="given", options=flip_eval.eval_options(mode="from_options"))


def _bruteforce_retrieval(model, params, max_examples):
  ds = seqio.get_mixture_or_task("flip_img2dataset_retrieval").get_dataset(
      LENGTHS, split="test", shuffle=False)
  examples = list(ds.take(max_examples).as_numpy_iterator())
  texts = np.zeros((len(examples), LENGTHS["targets"]), np.int32)
  for i, ex in enumerate(examples):
    ids = ex["targets"][:LENGTHS["targets"]]
    texts[i, :len(ids)] = ids
  img = np.asarray(model.encode_images(params, np.stack([ex["image"] for ex in examples])))
  txt = np.asarray(model.encode_texts(params, texts))
  return test_eval_metrics.bruteforce_recall(img, txt)


@pytest.mark.e2e
def test_binary_end_to_end(setup, binaries, own_zeroshot):
  d = setup["dir"]
  rc, out, err = _finish(binaries["zeroshot"])
  assert rc == 0, err[-3000:]
  written = json.loads((d / "out_zs" / "zeroshot_metrics.json").read_text())
  assert json.loads(out.strip().splitlines()[-1]) == written
  assert written["task"] == "flip_folder_zeroshot" and written["mode"] == "zeroshot"
  assert written["checkpoint_step"] == 7 and written["templates"] == "7"
  assert written["num_examples"] == 12 and written["num_classes"] == 6
  assert written["top1"] == pytest.approx(own_zeroshot["top1"])
  assert written["top5"] == pytest.approx(own_zeroshot["top5"])
  assert "images/s" in err
  # The table a person reads ends stderr: top-1/top-5, images, the five worst classes.
  title = f"zeroshot flip_folder_zeroshot ({written['split']}), checkpoint step 7, 12 images"
  assert title in err, err[-3000:]
  table = err[err.index(title):]
  assert f"top-1 {written['top1']:6.2f} %   top-5 {written['top5']:6.2f} %" in table
  rows = table.split("worst classes (top-1 %, images):\n")[1].splitlines()[:5]
  assert [r.split()[-2:] for r in rows] == [
      [f"{w['top1']:.2f}", f"({w['num_examples']})"] for w in written["worst_classes"]]
  assert [r.strip().startswith(w["class"]) for r, w in zip(rows, written["worst_classes"])] == [
      True] * 5

  rc, out, err = _finish(binaries["retrieval"])
  assert rc == 0, err[-3000:]
  written = json.loads((d / "out_ret" / "retrieval_metrics.json").read_text())
  assert json.loads(out.strip().splitlines()[-1]) == written
  assert written["mode"] == "retrieval" and written["checkpoint_step"] == 7
  assert written["num_examples"] == 10  # EVAL_MAX_EXAMPLES
  expected = _bruteforce_retrieval(setup["model"], setup["params"], 10)
  assert set(expected) == {f"{d}/recall@{k}" for d in ("image_to_text", "text_to_image")
                           for k in (1, 5, 10)}
  for k, v in expected.items():
    assert written[k] == pytest.approx(v), k


@pytest.mark.e2e
def test_binary_clear_errors(setup, binaries):
  rc, _, err = _finish(binaries["missing_ckpt"])
  assert rc == 2
  assert "flip_t5x.eval: error: Checkpoint not found" in err and "Traceback" not in err
  rc, _, err = _finish(binaries["bad_gin"])
  assert rc == 2
  assert "flip_t5x.eval: configuration error: in gin binding 'evaluate.mode = zeroshot'" in err
  assert "Traceback" not in err
