"""flip_t5x.data.shards and the make_shards binary: folder/CSV/Parquet -> img2dataset shards."""
import csv
import json
import re
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pyarrow as pa
from pyarrow import parquet as pq
import pytest
import tensorflow as tf

from flip_t5x.data import shards
from test_train_helpers import ROOT as REPO

FEATURES = {
    "jpg": tf.io.FixedLenFeature([], tf.string),
    "txt": tf.io.FixedLenFeature([], tf.string),
    "key": tf.io.FixedLenFeature([], tf.string),
    "height": tf.io.FixedLenFeature([], tf.int64),
    "width": tf.io.FixedLenFeature([], tf.int64),
}


def _save(path, shape=(24, 40, 3), fmt=None, seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
  Image.fromarray(pixels).save(path, format=fmt)


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def _read_records(paths, extra=None):
  spec = dict(FEATURES, **(extra or {}))
  records = []
  for record in tf.data.TFRecordDataset(sorted(paths)):
    parsed = tf.io.parse_single_example(record, spec)
    records.append({k: v.numpy() for k, v in parsed.items()})
  return records


def _files(directory):
  return sorted(os.listdir(directory))


@pytest.fixture
def images_dir(tmp_path):
  """3 good JPEGs (nested), 1 RGBA PNG, 1 truncated JPEG, 2 without usable caption."""
  root = tmp_path / "images"
  for i, sub in enumerate(["a", "a", "b/c"]):
    _save(str(root / sub / f"img{i}.jpg"), seed=i)
    _write(str(root / sub / f"img{i}.txt"), f"  a photo number {i}\n")
  _save(str(root / "alpha.png"), shape=(16, 16, 4))
  _write(str(root / "alpha.txt"), "a transparent stamp")
  with open(root / "a" / "img0.jpg", "rb") as f:
    good = f.read()
  with open(root / "broken.jpg", "wb") as f:
    f.write(good[: len(good) // 3])
  _write(str(root / "broken.txt"), "never written")
  _save(str(root / "nocaption.jpg"))
  _save(str(root / "empty.jpg"))
  _write(str(root / "empty.txt"), "   \n")
  _write(str(root / "notes.md"), "not an image")
  return root


def test_images_dir_to_shards(images_dir, tmp_path):
  out = tmp_path / "out"
  summary = shards.write_shards(shards.items_from_images_dir(str(images_dir)),
                                str(out), prefix="t", examples_per_shard=3)
  assert summary.written == 4
  assert summary.skipped == {"missing_image": 0, "unreadable_image": 1,
                             "missing_caption": 2, "unreadable_caption": 0}
  assert summary.shards == 2
  # Atomic: only the final names are left, nothing temporary (hidden files included).
  assert _files(out) == ["t-00000-of-00002.tfrecord", "t-00001-of-00002.tfrecord"]
  records = _read_records(summary.files)
  assert [len(_read_records([f])) for f in summary.files] == [3, 1]
  captions = sorted(r["txt"].decode() for r in records)
  assert captions == ["a photo number 0", "a photo number 1", "a photo number 2",
                      "a transparent stamp"]
  keys = [r["key"].decode() for r in records]
  assert len(set(keys)) == 4 and all(len(k) == 9 and k.isdigit() for k in keys)
  for r in records:
    image = tf.io.decode_jpeg(r["jpg"]).numpy()  # Re-encoded: every record is a JPEG.
    assert image.shape == (r["height"], r["width"], 3)
    if r["txt"] == b"a transparent stamp":
      assert image.shape == (16, 16, 3)
    else:
      assert image.shape == (24, 40, 3)
  assert json.loads(summary.to_json()) == {
      "written": 4, "skipped": summary.skipped, "shards": 2, "output_dir": str(out)}


def test_captions_csv_with_extra_columns(tmp_path):
  root = tmp_path / "data"
  _save(str(root / "imgs" / "x.png"), fmt="PNG")
  _save(str(tmp_path / "elsewhere" / "y.jpg"), shape=(50, 30, 3))
  _save(str(root / "imgs" / "z.jpg"))
  rows = [
      {"file": "imgs/x.png", "text": "relative path", "score": "0.5"},
      {"file": str(tmp_path / "elsewhere" / "y.jpg"), "text": "absolute path", "score": "1"},
      {"file": "imgs/missing.jpg", "text": "no such image", "score": "2"},
      {"file": "imgs/z.jpg", "text": "", "score": "3"},
  ]
  captions_file = root / "captions.csv"
  with open(captions_file, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=["file", "text", "score"])
    writer.writeheader()
    writer.writerows(rows)
  items = shards.items_from_captions_file(str(captions_file), path_column="file",
                                          caption_column="text", extra_columns=["score"])
  summary = shards.write_shards(items, str(tmp_path / "out"), prefix="csv", max_side=32)
  assert summary.written == 2 and summary.shards == 1
  assert summary.skipped["missing_image"] == 1 and summary.skipped["missing_caption"] == 1
  records = _read_records(summary.files, {"score": tf.io.FixedLenFeature([], tf.string)})
  by_caption = {r["txt"].decode(): r for r in records}
  assert set(by_caption) == {"relative path", "absolute path"}
  assert by_caption["relative path"]["score"] == b"0.5"
  # --max_side=32 shrinks the 50x30 image, keeping its aspect; the 24x40 one too.
  assert (by_caption["absolute path"]["height"], by_caption["absolute path"]["width"]) == (32, 19)
  assert (by_caption["relative path"]["height"], by_caption["relative path"]["width"]) == (19, 32)
  # Keys are the input row numbers, so they say which rows were skipped.
  assert sorted(r["key"] for r in records) == [b"000000000", b"000000001"]


def test_captions_parquet(tmp_path):
  _save(str(tmp_path / "a.jpg"))
  _save(str(tmp_path / "b.jpg"))
  table = pa.table({"path": ["a.jpg", "b.jpg"], "caption": ["first", None],
                    "label": [7, 8]})
  pq.write_table(table, str(tmp_path / "c.parquet"))
  items = shards.items_from_captions_file(str(tmp_path / "c.parquet"),
                                          extra_columns=["label"])
  summary = shards.write_shards(items, str(tmp_path / "out"))
  assert summary.written == 1 and summary.skipped["missing_caption"] == 1
  [record] = _read_records(summary.files, {"label": tf.io.FixedLenFeature([], tf.int64)})
  assert record["txt"] == b"first" and record["label"] == 7


def test_missing_column_and_missing_input_are_clear_errors(tmp_path):
  _write(str(tmp_path / "c.csv"), "image,caption\na.jpg,hi\n")
  with pytest.raises(ValueError, match="no column"):
    list(shards.items_from_captions_file(str(tmp_path / "c.csv")))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    list(shards.items_from_images_dir(str(tmp_path / "nope")))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    list(shards.items_from_captions_file(str(tmp_path / "nope.csv")))


def test_keep_format_and_array_inputs(tmp_path):
  _save(str(tmp_path / "p.png"), fmt="PNG")
  with open(tmp_path / "p.png", "rb") as f:
    png = f.read()
  grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
  items = [shards.Item(image=str(tmp_path / "p.png"), caption="png kept"),
           shards.Item(image=grey, caption="array"),
           shards.Item(image=b"not an image", caption="garbage bytes")]
  summary = shards.write_shards(items, str(tmp_path / "out"), image_format="keep")
  assert summary.written == 2 and summary.skipped["unreadable_image"] == 1
  records = {r["txt"]: r for r in _read_records(summary.files)}
  assert records[b"png kept"]["jpg"] == png
  decoded = tf.io.decode_png(records[b"array"]["jpg"]).numpy()
  np.testing.assert_array_equal(decoded[..., 0], grey)


def test_overwrite_replaces_the_whole_shard_set(tmp_path):
  items = [shards.Item(image=np.zeros((4, 4), np.uint8), caption=f"c{i}") for i in range(3)]
  out = str(tmp_path / "out")
  shards.write_shards(items, out, prefix="s", examples_per_shard=1)
  assert len(_files(out)) == 3
  with pytest.raises(FileExistsError):
    shards.write_shards(items, out, prefix="s", examples_per_shard=1)
  shards.write_shards(items, out, prefix="s", examples_per_shard=2, overwrite=True)
  assert _files(out) == ["s-00000-of-00002.tfrecord", "s-00001-of-00002.tfrecord"]


def test_crash_leaves_no_shard(tmp_path):
  def items():
    for i in range(5):
      yield shards.Item(image=np.zeros((4, 4), np.uint8), caption=f"c{i}")
    raise KeyboardInterrupt

  out = tmp_path / "out"
  with pytest.raises(KeyboardInterrupt):
    shards.write_shards(items(), str(out), examples_per_shard=2)
  assert _files(out) == []


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "flip_t5x.make_shards", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.e2e
def test_cli_prints_json_summary_and_reports_skips(images_dir, tmp_path):
  result = _run_cli(f"--images_dir={images_dir}", f"--output_dir={tmp_path / 'out'}",
                    "--prefix=cli", "--examples_per_shard=10")
  assert result.returncode == 0, result.stderr
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["written"] == 4 and summary["shards"] == 1
  assert summary["skipped"]["unreadable_image"] == 1
  assert "broken.jpg (unreadable_image)" in result.stderr
  assert "nocaption.jpg (missing_caption)" in result.stderr
  assert _files(tmp_path / "out") == ["cli-00000-of-00001.tfrecord"]
  # Progress (inputs read of 7, rate, ETA): plain lines, since stderr is not a terminal; no
  # TensorFlow start-up notices.
  assert re.search(r"^writing shards to \S+ \| 7 inputs / 7 inputs \(100%\) \| [\d,]+ inputs/s "
                   r"\| ETA 0s$", result.stderr, re.M), result.stderr[-2000:]
  assert "oneDNN" not in result.stderr and "absl::InitializeLog" not in result.stderr


@pytest.mark.e2e
def test_cli_missing_input_is_a_clear_error(tmp_path):
  result = _run_cli(f"--captions_file={tmp_path / 'nope.csv'}", f"--output_dir={tmp_path}")
  assert result.returncode != 0
  assert "nope.csv' does not exist" in result.stderr
  assert "Traceback" not in result.stderr
