"""FlipPredictor (embeddings, zero-shot, similarity) and the `flip_t5x.predict` command."""
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from flip_t5x import predictor as predictor_lib
from flip_t5x.data import preprocessors
from flip_t5x.data import vocabulary as vocabulary_lib
from flip_t5x.evaluation import zeroshot as zeroshot_eval
from flip_t5x import checkpoints
import test_train_helpers as h
from test_train_helpers import TINY_GIN

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "the", "cat", "dog", "car", "red",
         "blue", "on", "beach", "##s", "small", "large", "itap", "bad", "origami", "in", "video",
         "game", "art", "."]


def make_image(path, color, size=(40, 30)):
  rng = np.random.default_rng(sum(color))
  pixels = np.clip(np.array(color)[None, None] + rng.integers(-30, 30, size[::-1] + (3,)), 0, 255)
  Image.fromarray(pixels.astype(np.uint8)).save(path)
  return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("predictor")
  vocab_file = tmp / "vocab.txt"
  vocab_file.write_text("\n".join(VOCAB) + "\n")
  model = h.gin_model(TINY_GIN)
  # The model's own parameter tree (get_initial_variables, traced only: compiling the
  # initialiser costs seconds on CPU), filled with seeded random values.
  shapes = jax.eval_shape(lambda r: model.get_initial_variables(
      r, {"images": (1, 32, 32, 3), "texts": (1, 16)}), jax.random.PRNGKey(0))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree_util.tree_map(
      lambda s: (rng.standard_normal(s.shape) * 0.1).astype(np.float32), shapes)
  params["logit_scale"] = np.asarray(np.log(1 / 0.07), np.float32)
  ckpt = checkpoints.save_params(params, str(tmp / "model"), step=3)
  images = tmp / "images"
  images.mkdir()
  paths = [make_image(str(images / f"{n}.png"), c)
           for n, c in (("red", (220, 20, 20)), ("green", (20, 200, 40)), ("blue", (30, 30, 230)))]
  (images / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
  (images / "notes.txt").write_text("not an image")
  pred = predictor_lib.FlipPredictor.from_checkpoint(
      str(tmp / "model"), TINY_GIN, gin_bindings=[f"VOCAB_FILE = '{vocab_file}'"], batch_size=2)
  return dict(tmp=tmp, model=model, params=params, ckpt=ckpt, pred=pred, paths=paths,
              images=str(images), vocab_file=str(vocab_file))


def test_from_checkpoint_loads_params_and_vocab(setup):
  pred = setup["pred"]
  assert setup["ckpt"].endswith("checkpoint_3")
  jax.tree_util.tree_map(np.testing.assert_array_equal, pred.params, setup["params"])
  np.testing.assert_allclose(pred.logit_scale, 1 / 0.07, rtol=1e-5)
  assert pred.vocabulary.vocab_file == setup["vocab_file"]
  assert (pred.image_size, pred.text_length, pred.embed_dim) == (32, 16, 32)


@pytest.mark.slow
def test_image_inputs_agree_and_match_the_model(setup):
  pred, path = setup["pred"], setup["paths"][0]
  with open(path, "rb") as f:
    data = f.read()
  pil = Image.open(path)
  pixels = np.asarray(pil.convert("RGB"))
  z = pred.encode_images([path, pil, pixels, data, pixels.astype(np.float32)])
  assert z.shape == (5, 32)
  np.testing.assert_allclose(np.linalg.norm(z, axis=-1), 1.0, rtol=1e-5)
  for row in z[1:]:
    np.testing.assert_allclose(row, z[0], atol=1e-6)
  # The data pipeline's eval preprocessing, then the model itself.
  expected_pixels = preprocessors.eval_image(tf.constant(data), 32).numpy()
  np.testing.assert_allclose(pred.preprocess_image(path), expected_pixels, atol=1e-6)
  ref = jax.jit(setup["model"].encode_images)(setup["params"], expected_pixels[None])
  np.testing.assert_allclose(z[0], np.asarray(ref)[0], atol=1e-5)
  # A single image (not a list) and grey pixels are accepted.
  assert pred.encode_images(path).shape == (1, 32)
  assert pred.encode_images(pixels[:, :, 0]).shape == (1, 32)


@pytest.mark.slow
def test_fixed_batches_compile_once(setup):
  pred = setup["pred"]  # batch_size=2
  paths = setup["paths"]
  z5 = pred.encode_images(paths + paths[:2])
  z1 = pred.encode_images(paths[1:2])
  np.testing.assert_allclose(z5[1], z1[0], atol=1e-6)
  np.testing.assert_allclose(z5[4], z1[0], atol=1e-6)
  t = pred.encode_texts(["a cat", "a dog", "a car"])
  pred.encode_texts(["a red car"])
  assert pred._encoder.image_fn._cache_size() == 1
  assert pred._encoder.text_fn._cache_size() == 1
  assert t.shape == (3, 32)


@pytest.mark.slow
def test_texts_are_tokenised_padded_and_truncated(setup):
  pred = setup["pred"]
  ids = pred.tokenize(["a photo of the cat", "cat " * 40])
  assert ids.shape == (2, 16) and ids.dtype == np.int32
  assert ids[0, :6].tolist() == [4, 5, 6, 7, 8, 0] and not ids[0, 5:].any()
  assert ids[1].tolist() == [8] * 16  # truncated to the model's text length
  z = pred.encode_texts(["a photo of the cat", "cat " * 40])
  ref = jax.jit(setup["model"].encode_texts)(setup["params"], ids)
  np.testing.assert_allclose(z, np.asarray(ref), atol=1e-5)
  assert pred.encode_texts([]).shape == (0, 32)


@pytest.mark.slow
def test_zero_shot_and_similarity(setup):
  pred, paths = setup["pred"], setup["paths"]
  names = ["red car", "dog", "blue cat"]
  templates = ["a photo of the {}.", "art of the {}."]
  probs = pred.zero_shot(paths, names, templates=templates)
  assert probs.shape == (3, 3)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
  z = pred.encode_images(paths)
  cls = zeroshot_eval.class_embeddings(pred.encode_texts, names, templates)
  logits = pred.logit_scale * z @ cls.T
  expected = np.exp(logits - logits.max(-1, keepdims=True))
  np.testing.assert_allclose(probs, expected / expected.sum(-1, keepdims=True), atol=1e-5)
  # Default templates: the gin/zeroshot set (FLIP's 7).
  assert pred.zero_shot(paths[:1], names).shape == (1, 3)
  sim = pred.similarity(paths, ["a cat", "a dog on the beach"])
  np.testing.assert_allclose(sim, z @ pred.encode_texts(["a cat", "a dog on the beach"]).T,
                             atol=1e-6)
  assert sim.shape == (3, 2) and np.all(np.abs(sim) <= 1 + 1e-5)


def test_bad_inputs_are_named(setup):
  pred = setup["pred"]
  broken = os.path.join(setup["images"], "broken.jpg")
  with pytest.raises(predictor_lib.ImageError, match="broken.jpg: cannot decode image"):
    pred.encode_images([setup["paths"][0], broken])
  with pytest.raises(predictor_lib.ImageError, match="nope.png: cannot read file"):
    pred.preprocess_image("/nonexistent/nope.png")
  with pytest.raises(predictor_lib.ImageError, match=r"image #0: expected pixels"):
    pred.encode_images([np.zeros((4, 4, 5))])
  no_vocab = predictor_lib.FlipPredictor(setup["model"], setup["params"])
  with pytest.raises(ValueError, match="VOCAB_FILE"):
    no_vocab.encode_texts(["a cat"])
  big = setup["tmp"] / "big_vocab.txt"
  big.write_text("\n".join(f"w{i}" for i in range(1000)) + "\n")  # 1001 ids > vocab_size 1000
  with pytest.raises(ValueError, match="1001 ids .* vocab_size 1000"):
    predictor_lib.FlipPredictor(setup["model"], setup["params"],
                                vocabulary_lib.WordPieceVocabulary(str(big)))


def run_cli(argv):
  """`python -m flip_t5x.predict ARGV` in a fresh process: (exit status, stdout, stderr)."""
  proc = h.run_binary("predict", argv, timeout=180)
  return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.e2e
def test_cli_labels_jsonl_reports_bad_files(setup):
  labels_file = setup["tmp"] / "labels.txt"
  labels_file.write_text("red car\ndog\n\nblue cat\n")
  code, out, err = run_cli([
      f"--checkpoint={setup['tmp'] / 'model'}", f"--gin_file={TINY_GIN}",
      f"--gin_bindings=VOCAB_FILE = '{setup['vocab_file']}'", f"--images={setup['images']}",
      f"--labels_file={labels_file}", "--top_k=2", "--format=jsonl", "--templates={}"])
  assert code == 0, err
  rows = [json.loads(line) for line in out.strip().splitlines()]
  assert [os.path.basename(r["image"]) for r in rows] == ["blue.png", "broken.jpg", "green.png",
                                                          "red.png"]  # notes.txt is not listed
  assert "cannot decode image" in rows[1]["error"] and "broken.jpg" in err
  pred = setup["pred"]
  probs = pred.zero_shot(setup["paths"][2], ["red car", "dog", "blue cat"], templates=["{}"])[0]
  best = np.argsort(-probs)[:2]
  names = ["red car", "dog", "blue cat"]
  assert [d["label"] for d in rows[0]["labels"]] == [names[j] for j in best]
  np.testing.assert_allclose([d["prob"] for d in rows[0]["labels"]], probs[best], atol=1e-5)


@pytest.mark.e2e
def test_cli_query_table(setup):
  glob_spec = os.path.join(setup["images"], "*.png")
  code, out, err = run_cli([
      f"--checkpoint={setup['tmp'] / 'model'}", f"--gin_file={TINY_GIN}",
      f"--vocab_file={setup['vocab_file']}", f"--images={glob_spec}",
      f"--images={setup['images']}/missing.png", "--query=a red car"])
  assert code == 0, err
  lines = out.strip().splitlines()
  assert lines[0] == "query: a red car" and lines[1].startswith("rank")
  pred = setup["pred"]
  paths = sorted(setup["paths"])
  cos = pred.similarity(paths, ["a red car"])[:, 0]
  ranked = [paths[j] for j in np.argsort(-cos)]
  assert [line.split()[-1] for line in lines[2:5]] == ranked
  assert "missing.png" in lines[5] and "ERROR" in lines[5] and "missing.png" in err


@pytest.mark.e2e
def test_cli_labels_table(setup):
  code, out, err = run_cli([
      f"--checkpoint={setup['ckpt']}", f"--gin_file={TINY_GIN}",
      f"--gin.VOCAB_FILE='{setup['vocab_file']}'", f"--images={setup['images']}",
      "--labels=cat,dog,car"])
  assert code == 0, err[-3000:]
  lines = out.strip().splitlines()
  assert lines[0].split() == ["image", "rank", "label", "prob"]
  assert len(lines) == 1 + 3 * 3 + 1  # 3 readable images x 3 labels (top_k clipped), 1 error
  assert any("broken.jpg" in line and "ERROR" in line for line in lines)
  assert "broken.jpg" in err


@pytest.mark.e2e
def test_cli_exit_status_when_nothing_is_readable(setup):
  code, out, err = run_cli([
      f"--checkpoint={setup['ckpt']}", f"--gin_file={TINY_GIN}",
      f"--vocab_file={setup['vocab_file']}", f"--images={setup['images']}/broken.jpg",
      "--query=cat", "--format=jsonl"])
  assert code == 1
  row = json.loads(out.strip())
  assert row["error"].startswith("cannot decode image: ") and "\n" not in row["error"]
  assert "none of the 1 images" in err
  code, _, err = run_cli([f"--checkpoint={setup['ckpt']}", f"--gin_file={TINY_GIN}",
                          f"--images={setup['images']}", "--query=cat", "--labels=a,b"])
  assert code == 1 and "pass exactly one of --labels, --labels_file, --query" in err


@pytest.mark.e2e
def test_cli_bad_vocabulary_is_one_line_and_exit_2(setup):
  missing = setup["tmp"] / "no_vocab.txt"
  code, out, err = run_cli([f"--checkpoint={setup['ckpt']}", f"--gin_file={TINY_GIN}",
                            f"--vocab_file={missing}", f"--images={setup['images']}",
                            "--labels=a,b"])
  assert code == 2 and not out, err[-3000:]
  assert err.strip().splitlines()[-1].startswith(
      f"flip_t5x.predict: error: cannot read the WordPiece vocabulary '{missing}'"), err[-3000:]
  assert "Traceback" not in err
