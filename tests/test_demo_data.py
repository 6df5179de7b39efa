"""flip_t5x.data.demo (demo_data's library): Fashion-MNIST -> captioned shards + zero-shot tree."""
import glob
import json
import os
import random
import re
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from flip_t5x.data import demo
from test_train_helpers import ROOT as REPO

SMALL = dict(num_train=200, num_eval_per_class=3, examples_per_shard=64, vocab_size=0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  output_dir = str(tmp_path_factory.mktemp("demo"))
  return demo.prepare(output_dir, **SMALL)


def test_training_shards(prepared):
  assert not prepared.cached
  files = sorted(glob.glob(prepared.train_pattern))
  assert [os.path.basename(f) for f in files] == [
      f"demo-0000{i}-of-00004.tfrecord" for i in range(4)]  # 64 + 64 + 64 + 8.
  spec = {"jpg": tf.io.FixedLenFeature([], tf.string),
          "txt": tf.io.FixedLenFeature([], tf.string),
          "key": tf.io.FixedLenFeature([], tf.string),
          "height": tf.io.FixedLenFeature([], tf.int64),
          "width": tf.io.FixedLenFeature([], tf.int64),
          "label": tf.io.FixedLenFeature([], tf.int64)}
  records = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files)]
  assert len(records) == 200
  with open(prepared.captions_file, encoding="utf-8") as f:
    captions = f.read().splitlines()
  assert [r["txt"].numpy().decode() for r in records] == captions
  labels = [int(r["label"]) for r in records]
  assert set(labels) == set(range(10))  # 200 random images cover every class.
  for r in records[:10]:
    image = tf.io.decode_jpeg(r["jpg"]).numpy()
    assert image.shape == (32, 32, 3) and (int(r["height"]), int(r["width"])) == (32, 32)
    # The 2-pixel pad is black; the photo sits inside it.
    assert image[:2].max() < 40 and image[2:30, 2:30].max() > 100
  # Varied captions: mostly distinct sentences, each naming its own class somehow.
  assert len(set(captions)) > 150
  for caption, label in zip(captions, labels):
    nouns = [n for n, _ in demo._NOUNS[demo.CLASS_NAMES[label]]]
    assert any(n in caption.lower() for n in nouns), caption


def test_zeroshot_tree(prepared):
  classes = sorted(d for d in os.listdir(prepared.zeroshot_dir)
                   if os.path.isdir(os.path.join(prepared.zeroshot_dir, d)))
  assert classes == list(demo.CLASS_NAMES)
  assert len(classes) == 10 and "ankle boot" in classes and "t-shirt" in classes
  with open(prepared.class_names_file, encoding="utf-8") as f:
    assert f.read().splitlines() == classes
  for name in classes:
    pngs = glob.glob(os.path.join(prepared.zeroshot_dir, name, "*.png"))
    assert len(pngs) == 3
    with Image.open(pngs[0]) as image:
      assert image.size == (32, 32) and image.mode == "RGB"
  assert prepared.num_eval == 30
  with open(prepared.templates_file, encoding="utf-8") as f:
    templates = f.read().splitlines()
  assert len(templates) >= 5 and all(t.count("{}") == 1 for t in templates)


def test_second_run_is_cached_and_new_settings_rebuild(prepared):
  marker = os.path.join(prepared.output_dir, demo.MARKER)
  mtimes = {f: os.path.getmtime(f) for f in prepared.train_files + [marker]}
  start = time.time()
  again = demo.prepare(prepared.output_dir, **SMALL)
  assert again.cached and time.time() - start < 1.0
  assert again.train_files == prepared.train_files
  assert {f: os.path.getmtime(f) for f in mtimes} == mtimes
  # Different settings rebuild in place and leave nothing stale behind.
  rebuilt = demo.prepare(prepared.output_dir, **dict(SMALL, num_eval_per_class=2,
                                                  examples_per_shard=100))
  assert not rebuilt.cached and len(rebuilt.train_files) == 2
  assert len(glob.glob(rebuilt.train_pattern)) == 2
  assert len(glob.glob(os.path.join(rebuilt.zeroshot_dir, "*", "*.png"))) == 20
  demo.prepare(prepared.output_dir, **SMALL)  # Back, for the other tests.


def test_vocab(tmp_path):
  data = demo.prepare(str(tmp_path), **dict(SMALL, vocab_size=200))
  with open(data.vocab_file, encoding="utf-8") as f:
    vocab = f.read().splitlines()
  assert 20 < len(vocab) <= 200 and "shirt" in vocab


def test_missing_source_says_how_to_install(tmp_path):
  with pytest.raises(FileNotFoundError, match=re.escape(demo.APT_INSTALL)):
    demo.prepare(str(tmp_path / "out"), source_dir=str(tmp_path / "nope"), **SMALL)
  assert not os.path.exists(tmp_path / "out" / demo.MARKER)


def test_captions_never_name_another_class():
  """Label leaks across classes would teach the text tower wrong pairs."""
  rng = random.Random(0)

  def mentions(noun, caption):
    return re.search(rf"(?<![\w-]){re.escape(noun)}(?![\w-])", caption.lower()) is not None

  for name in demo.CLASS_NAMES:
    captions = [demo.make_caption(name, rng) for _ in range(300)]
    assert len(set(captions)) > 200
    assert sum(mentions(name, c) for c in captions) > 90  # The prompt's own word is common.
    for other in demo.CLASS_NAMES:
      if other == name:
        continue
      for noun, _ in demo._NOUNS[other]:
        leaks = [c for c in captions if mentions(noun, c)]
        assert not leaks, (name, noun, leaks[:3])


def test_prepare_image_pads_to_32():
  image = np.full((28, 28), 255, np.uint8)
  padded = demo.prepare_image(image, 32)
  assert padded.shape == (32, 32) and padded[:2].max() == 0 and padded[2:30, 2:30].min() == 255
  assert demo.prepare_image(image, 28) is image
  assert demo.prepare_image(image, 64).shape == (64, 64)


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "flip_t5x.demo_data", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.e2e
def test_cli_prints_json_summary_and_folder_can_move(tmp_path):
  result = _run_cli(f"--output_dir={tmp_path / 'a'}", "--num_train=50",
                    "--num_eval_per_class=1", "--vocab_size=0")
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["num_train"] == 50 and summary["num_eval"] == 10 and not summary["cached"]
  os.rename(tmp_path / "a", tmp_path / "b")
  moved = demo.prepare(str(tmp_path / "b"), num_train=50, num_eval_per_class=1,
                            vocab_size=0)
  assert moved.cached and moved.train_files[0].startswith(str(tmp_path / "b"))


@pytest.mark.e2e
def test_cli_without_fashion_mnist_names_the_apt_command(tmp_path):
  result = _run_cli(f"--output_dir={tmp_path}", f"--source_dir={tmp_path / 'nope'}")
  assert result.returncode != 0
  assert demo.APT_INSTALL in result.stderr and "Traceback" not in result.stderr
