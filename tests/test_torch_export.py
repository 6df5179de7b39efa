"""FLIP in PyTorch (issue 28): the export, OpenCLIP's interface, CLIP_benchmark, equal numbers.

The PyTorch model's embeddings equal the JAX model's within 1e-5 on the same inputs, for a
flip_t5x checkpoint and for the official release's format (test_import_checkpoint's writer and
its numpy forward pass of the official model); the exported tokenizer gives the training
pipeline's ids; `preprocess_val` is the official eval crop (TensorFlow's, to float rounding); and
CLIP_benchmark, run through `python -m flip_t5x.clip_benchmark` on webdatasets written in its own
layout, scores the tiny model as flip_t5x's own zero-shot and retrieval code does.
"""
import io
import json
import os
import subprocess
import sys
import tarfile

from absl import app
import gin
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from flip_t5x import pytorch as flip_torch  # first: torchvision beside a CPU build of torch
from flip_t5x import clip_benchmark as clip_benchmark_binary
from flip_t5x import predictor as predictor_lib
from flip_t5x.data import images
from flip_t5x.evaluation import retrieval
from flip_t5x.evaluation import zeroshot as zeroshot_eval
from flip_t5x.pytorch import cli
from flip_t5x.pytorch import convert
from flip_t5x.pytorch import transforms
import test_import_checkpoint as tic
import test_predictor as tp
from test_predictor import setup  # pylint: disable=unused-import  (the tiny model fixture)
import test_train_helpers as h
import torch

TINY_GIN = tic.TINY_GIN
TOLERANCE = 1e-5  # float32 embeddings, PyTorch against JAX
CLASSES = ["red car", "blue dog", "small cat"]  # words of test_predictor's vocabulary
COLORS = [(220, 30, 30), (30, 40, 220), (120, 120, 120)]
TEMPLATES = ["a photo of a {}.", "{}", "a large {} on the beach."]


@pytest.fixture(scope="module")
def tiny(setup, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """test_predictor's seeded tiny model (a flip_t5x checkpoint), its export, labelled photos."""
  tmp = tmp_path_factory.mktemp("torch_export")
  pred = setup["pred"]
  export = str(tmp / "export")
  convert.write_export(export, pred.module, pred.params, pred.vocabulary.vocab_file,
                       cli.preprocess_config(pred), {"checkpoint": str(setup["tmp"] / "model")})
  gin.clear_config()
  sizes = [(40, 30), (32, 32), (27, 51), (64, 48), (33, 20), (45, 45)]
  paths = [tp.make_image(str(tmp / f"{i}.png"), COLORS[i % 3], size)
           for i, size in enumerate(sizes)]
  return dict(tmp=tmp, pred=pred, export=export, vocab_file=setup["vocab_file"], paths=paths,
              model_dir=str(setup["tmp"] / "model"), labels=[i % 3 for i in range(len(sizes))])


def _torch_embeddings(model, pixels, ids):
  with torch.no_grad():
    image = model.encode_image(torch.from_numpy(pixels).permute(0, 3, 1, 2), normalize=True)
    text = model.encode_text(torch.as_tensor(ids), normalize=True)
  return image.numpy(), text.numpy()


@pytest.mark.slow
def test_exported_model_equals_the_jax_model(tiny):
  pred = tiny["pred"]
  model, preprocess_train, preprocess_val = flip_torch.create_model_and_transforms(tiny["export"])
  assert not model.training and model.context_length == 16 and model.vocab_size == 1000
  pixels = np.stack([pred.preprocess_image(p) for p in tiny["paths"]])
  ids = pred.tokenize(["a photo of a red car.", "blue dogs on the beach", "itap"])
  image, text = _torch_embeddings(model, pixels, ids)
  assert np.abs(image - pred.encode_pixels(pixels)).max() < TOLERANCE
  assert np.abs(text - pred.encode_tokens(ids)).max() < TOLERANCE
  np.testing.assert_allclose(model.logit_scale.exp().item(), pred.logit_scale, rtol=1e-6)
  # forward: normalised features and the scale, as OpenCLIP's CLIP.
  z_img, z_txt, scale = model(torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.as_tensor(ids))
  np.testing.assert_allclose(z_img.detach().norm(dim=-1).numpy(), 1.0, rtol=1e-6)
  assert z_txt.shape == (3, 32) and scale.item() == pytest.approx(pred.logit_scale, rel=1e-6)
  # The train transform makes model inputs too.
  assert preprocess_train(Image.open(tiny["paths"][0])).shape == (3, 32, 32)
  assert preprocess_val(Image.open(tiny["paths"][0])).shape == (3, 32, 32)


@pytest.mark.slow
def test_release_format_checkpoint_equals_jax_and_the_official_forward(tmp_path):
  """The official format (t5x msgpack + zarr, the release's names) through the same conversion."""
  target = tic.official_tree(np.random.default_rng(3), **tic.TINY)
  tic.write_t5x_checkpoint(str(tmp_path), target)
  vocab_file = tmp_path / "vocab.txt"
  vocab_file.write_text("\n".join(tp.VOCAB) + "\n")
  pred = predictor_lib.FlipPredictor.from_checkpoint(str(tmp_path), TINY_GIN,
                                                     vocab_file=str(vocab_file))
  gin.clear_config()
  model = convert.torch_model(pred.module, pred.params)
  rng = np.random.default_rng(4)
  pixels = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
  ids = rng.integers(1, 1000, (3, 16)).astype(np.int32)
  ids[1, 6:] = 0
  image, text = _torch_embeddings(model, pixels, ids)
  assert np.abs(image - pred.encode_pixels(pixels)).max() < TOLERANCE
  assert np.abs(text - pred.encode_tokens(ids)).max() < TOLERANCE
  heads = tic.TINY["img_heads"]
  assert np.abs(image - tic.ref_image(pixels, target, heads, approximate=True)).max() < TOLERANCE
  assert np.abs(text - tic.ref_text(ids, target, heads, approximate=True)).max() < TOLERANCE
  np.testing.assert_allclose(model.logit_scale.exp().item(), np.exp(2.5), rtol=1e-6)


def test_tokenizer_ids_equal_the_pipelines(tiny):
  pred = tiny["pred"]
  tokenizer = flip_torch.get_tokenizer(f"local-dir:{tiny['export']}")
  texts = ["A photo of the RED cars.", "blue, dog", "itap of a zebra", "",
           " ".join(["photo"] * 40)]
  ids = tokenizer(texts)
  assert ids.dtype == torch.long and tuple(ids.shape) == (5, 16)
  np.testing.assert_array_equal(ids.numpy(), pred.tokenize(texts))
  np.testing.assert_array_equal(tokenizer("a photo").numpy(), pred.tokenize(["a photo"]))
  np.testing.assert_array_equal(tokenizer(texts, context_length=6).numpy(),
                                pred.tokenize(texts)[:, :6])


def test_text_tower_pads_or_cuts_ids_to_its_length(tiny):
  """As the JAX tower: ids padded to 5, 8 or 16 embed alike, and ids past 16 are cut."""
  model = flip_torch.create_model(tiny["export"])
  ids = tiny["pred"].tokenize(["a red car", "blue dogs"])  # 3 and 3 ids, then zeros
  longer = np.concatenate([ids, np.full((2, 7), 9, np.int32)], axis=1)
  with torch.no_grad():
    full = model.encode_text(torch.as_tensor(ids)).numpy()
    for n in (5, 8):
      np.testing.assert_array_equal(model.encode_text(torch.as_tensor(ids[:, :n])).numpy(), full)
    np.testing.assert_array_equal(model.encode_text(torch.as_tensor(longer)).numpy(), full)


def test_image_tower_refuses_another_size(tiny):
  model = flip_torch.create_model(tiny["export"])
  with pytest.raises(ValueError, match=r"takes \[N, 3, 32, 32\]"):
    model.encode_image(torch.zeros(1, 3, 48, 48))


def test_preprocess_val_is_the_official_eval_crop(tiny, tmp_path):
  """`preprocess_val` against the pipeline's TensorFlow crop (TF1 bicubic) on PNG inputs."""
  pred = tiny["pred"]
  _, _, preprocess_val = flip_torch.create_model_and_transforms(tiny["export"])
  rng = np.random.default_rng(7)
  for i, (w, h, mode) in enumerate([(40, 30, "RGB"), (17, 90, "RGB"), (300, 200, "RGB"),
                                    (32, 32, "RGB"), (50, 41, "L"), (41, 50, "RGBA")]):
    pixels = rng.integers(0, 256, (h, w, len(mode)), dtype=np.uint8).squeeze()
    path = str(tmp_path / f"{i}.png")
    Image.fromarray(pixels, mode).save(path)
    ours = preprocess_val(Image.open(path)).permute(1, 2, 0).numpy()
    assert ours.shape == (32, 32, 3)
    assert np.abs(ours - pred.preprocess_image(path)).max() < 1e-5, (w, h, mode)
  # uint8 pixels are taken as they are.
  pixels = rng.integers(0, 256, (30, 45, 3), dtype=np.uint8)
  np.testing.assert_allclose(preprocess_val(pixels).permute(1, 2, 0).numpy(),
                             pred.preprocess_image(pixels), atol=1e-5)
  # With a pad (tasks.TaskConfig.eval_pad: 32 at 224 px is the classic 224/256 crop), as the
  # official code.
  padded = transforms.OfficialEvalCrop(32, images.MEAN_RGB, images.STDDEV_RGB, pad=8)
  official = images.center_crop_image(tf.constant(tf.io.encode_png(pixels).numpy()), 32, 8)
  np.testing.assert_allclose(padded.pixels(pixels), official.numpy(), atol=1e-5)


@pytest.mark.e2e
def test_pytorch_side_needs_neither_jax_nor_tensorflow(tiny):
  """Loading an export and preprocessing images imports torch only (the tokenizer is FLIP's)."""
  code = ("import sys, numpy as np; from flip_t5x import pytorch as p; "
          f"m, _, pre = p.create_model_and_transforms({tiny['export']!r}); "
          "x = pre(np.zeros((20, 30, 3), np.uint8))[None]; print(m.encode_image(x).shape); "
          "print(sorted(k for k in ('jax', 'tensorflow', 'flax') if k in sys.modules))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=h.ROOT, env=h.env(),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split("\n")[:2] == ["torch.Size([1, 32])", "[]"]


@pytest.mark.e2e
def test_export_binary(tiny, tmp_path):
  out = tmp_path / "export"
  proc = h.run_binary("export_torch", [
      f"--checkpoint={tiny['model_dir']}", f"--gin_file={TINY_GIN}",
      f"--vocab_file={tiny['vocab_file']}", f"--output={out}"], timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "max |torch - jax| embedding difference" in proc.stdout
  assert sorted(os.listdir(out)) == ["flip_config.json", "model.safetensors", "vocab.txt"]
  config = json.loads((out / "flip_config.json").read_text())
  assert config["model_cfg"]["vision_cfg"]["pooling"] == "mean"
  assert config["model_cfg"]["layer_norm_epsilon"] == 1e-6
  assert config["source"]["checkpoint"] == tiny["model_dir"]
  assert (out / "vocab.txt").read_text() == "\n".join(tp.VOCAB) + "\n"
  a, b = (flip_torch.create_model(d).state_dict() for d in (str(out), tiny["export"]))
  assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
  # A path without a checkpoint: one line, exit status 2, nothing written.
  bad = h.run_binary("export_torch", [f"--checkpoint={tmp_path / 'nothing'}",
                                      f"--gin_file={TINY_GIN}", f"--output={tmp_path / 'o2'}"])
  assert bad.returncode == 2 and bad.stderr.strip().startswith("flip_t5x.export_torch: error: ")
  assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "o2").exists()


@pytest.mark.e2e
def test_clip_benchmark_args_are_split_and_its_model_flags_refused():
  ours, theirs = clip_benchmark_binary.split_args(
      ["prog", "--checkpoint", "/m", "--dataset", "wds/a", "wds/b", "--gin.VOCAB_FILE='v'",
       "--verbose", "--task=zeroshot_retrieval", "--gin_file=x.gin", "--recall_k", "1", "5"],
      clip_benchmark_binary.OWN_FLAGS)
  assert ours == ["prog", "--checkpoint", "/m", "--gin.VOCAB_FILE='v'", "--verbose",
                  "--gin_file=x.gin"]
  assert theirs == ["--dataset", "wds/a", "wds/b", "--task=zeroshot_retrieval", "--recall_k",
                    "1", "5"]
  with pytest.raises(app.UsageError, match="--model_type=flip_t5x"):
    clip_benchmark_binary.main([], ["--dataset=cifar10", "--model=ViT-B-32"])


def _write_wds(root, samples, classnames=None, templates=None, retrieval_type=False):
  """CLIP_benchmark's local webdataset layout: test/{nshards.txt,0.tar} and its text files."""
  os.makedirs(os.path.join(root, "test"))
  with open(os.path.join(root, "test", "nshards.txt"), "w") as f:
    f.write("1\n")
  with tarfile.open(os.path.join(root, "test", "0.tar"), "w") as tar:
    for i, (path, second) in enumerate(samples):
      with open(path, "rb") as f:
        files = {"png": f.read(), "txt" if retrieval_type else "cls": str(second).encode()}
      for ext, data in files.items():
        info = tarfile.TarInfo(f"s{i:04d}.{ext}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  for name, lines in (("classnames.txt", classnames),
                      ("zeroshot_classification_templates.txt", templates),
                      ("dataset_type.txt", ["retrieval"] if retrieval_type else None)):
    if lines:
      with open(os.path.join(root, name), "w") as f:
        f.write("\n".join(lines) + "\n")


@pytest.mark.e2e
def test_clip_benchmark_scores_as_flip_t5x(tiny, tmp_path):
  """The real CLIP_benchmark entry point on webdatasets in its layout: zero-shot classification
  and retrieval agree with flip_t5x's own metrics on the JAX model (same images, names, prompts).
  """
  pred, paths, labels = tiny["pred"], tiny["paths"], tiny["labels"]
  captions = [f"a photo of a {CLASSES[y]}." if i % 2 else f"{CLASSES[y]} on the beach"
              for i, y in enumerate(labels)]
  _write_wds(str(tmp_path / "tiny_classes"), list(zip(paths, labels)), CLASSES,
             [t.replace("{}", "{c}") for t in TEMPLATES])  # CLIP_benchmark's placeholder
  # "flickr30k": a name CLIP_benchmark's --task=auto scores as retrieval (one run, both tasks).
  _write_wds(str(tmp_path / "flickr30k"), list(zip(paths, captions)), retrieval_type=True)
  out = tmp_path / "results"
  out.mkdir()
  proc = h.run_binary("clip_benchmark", [
      f"--checkpoint={tiny['model_dir']}", f"--gin_file={TINY_GIN}",
      f"--gin.VOCAB_FILE='{tiny['vocab_file']}'", "--dataset", "wds/tiny_classes",
      "wds/flickr30k", f"--dataset_root={tmp_path}/{{dataset}}", "--no_amp", "--num_workers=1",
      "--batch_size=4", "--recall_k", "1", "2", f"--output={out}/{{dataset}}_{{task}}.json"],
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  zs = json.loads((out / "tiny_classes_zeroshot_classification.json").read_text())
  ret = json.loads((out / "flickr30k_zeroshot_retrieval.json").read_text())
  assert (zs["model"], zs["pretrained"]) == ("flip_tiny", "model")

  z_img = pred.encode_images(paths)
  expected = zeroshot_eval.zeroshot_accuracy(z_img, pred.class_embeddings(CLASSES, TEMPLATES),
                                             np.asarray(labels), ks=(1,))
  assert 100 * zs["metrics"]["acc1"] == pytest.approx(expected["top1"], abs=1e-6)
  recall = retrieval.retrieval_recall(z_img, pred.encode_texts(captions), ks=(1, 2))
  for k in (1, 2):
    assert 100 * ret["metrics"][f"image_retrieval_recall@{k}"] == pytest.approx(
        recall[f"text_to_image/recall@{k}"], abs=1e-6)
    assert 100 * ret["metrics"][f"text_retrieval_recall@{k}"] == pytest.approx(
        recall[f"image_to_text/recall@{k}"], abs=1e-6)
