"""Bad input never stops training and is never lost uncounted: records and damaged shard files.

Shards mix good records with empty, truncated, non-image, CMYK, oversized images and empty or
non-UTF-8 captions (`test_data_pipeline._records`), a record a decoder raises on as the very last
one of the stream, a truncated file, a file corrupt in the middle (TFRecord) or cut at a member
boundary (tar), and a zero-byte file. One unshuffled pass through the real task must keep every
good record, count every bad record by reason and each damaged file once, and log the damaged
files' paths. `test_train_webdataset.py` runs the same shards through the training binary.
"""
from __future__ import annotations

import logging
import os
import tarfile
from typing import Dict, List, Tuple

import gin
import pytest
import seqio
import tensorflow as tf

import tasks  # pylint: disable=unused-import  (registers the tasks)
import test_data_pipeline as dp
from flip_t5x.data import preprocessors
from flip_t5x.data.feature_converters import ImageTextFeatureConverter

S, L = 32, 8
Record = Tuple[bytes, bytes, str]  # image (or None), caption (or None), expected reason


def _good(n: int, seed: int) -> List[Record]:
  return [(dp._image("JPEG", seed=seed + i), f"a red car photo number {i}".encode(), "ok")
          for i in range(n)]


def _tfrecord_lengths(path: str) -> List[int]:
  return [len(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def _truncate(path: str, size: int) -> None:
  with open(path, "r+b") as f:
    f.truncate(size)


def _damage_tfrecord(path: str, how: str) -> int:
  """Cuts the last record in half, or flips a byte in the second record; returns records left."""
  lengths = _tfrecord_lengths(path)
  if how == "truncate":
    _truncate(path, os.path.getsize(path) - lengths[-1] // 2)
    return len(lengths) - 1
  with open(path, "r+b") as f:  # a data byte of record 1: its CRC check fails
    f.seek(16 + lengths[0] + 12 + lengths[1] // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))
  return 1


def _damage_tar(path: str, how: str) -> int:
  """Cuts the last sample's image in half, or the file right before the last sample's first
  header; returns the samples left whole."""
  with tarfile.open(path) as tar:
    members = tar.getmembers()
  last_key = members[-1].name.split(".")[0]
  first = next(m for m in members if m.name.startswith(last_key))
  samples = len({m.name.split(".")[0] for m in members})
  _truncate(path, first.offset_data + first.size // 2 if how == "truncate" else first.offset)
  return samples - 1


def write_bad_shards(root: str, fmt: str) -> Dict[str, object]:
  """Writes the bad-input shard set; returns expected counts, damaged paths and good captions."""
  ext = "tfrecord" if fmt == "tfrecord" else "tar"
  write = dp._write_tfrecord if fmt == "tfrecord" else dp._write_tar
  damage = _damage_tfrecord if fmt == "tfrecord" else _damage_tar
  os.makedirs(root, exist_ok=True)
  expected: Dict[str, int] = {}
  captions = []

  def add(records):
    for _, text, reason in records:
      expected[reason] = expected.get(reason, 0) + 1
      if reason == "ok":
        captions.append(text.decode())

  mixed = dp._records(0) + [(dp._truncated_jpeg(), b"a decoder raises on the last record",
                             "decode_error")]
  write(os.path.join(root, f"00000.{ext}"), mixed)
  add(mixed)
  damaged = []
  for i, how in ((1, "truncate"), (2, "corrupt" if fmt == "tfrecord" else "boundary")):
    path = os.path.join(root, f"{i:05d}.{ext}")
    records = _good(4, seed=100 * i)
    write(path, records)
    add(records[:damage(path, how)])
    damaged.append(path)
  open(os.path.join(root, f"00003.{ext}"), "wb").close()  # zero bytes: no records, no damage
  expected["damaged_file"] = len(damaged)
  return {"expected": expected, "damaged": damaged, "captions": sorted(captions),
          "pattern": os.path.join(root, f"*.{ext}")}


@pytest.fixture(scope="module", params=["tfrecord", "webdataset"])
def bad_shards(request, tmp_path_factory):
  root = tmp_path_factory.mktemp(f"bad_{request.param}")
  shards = write_bad_shards(str(root), request.param)
  shards["vocab"] = dp._vocab_file(str(root))
  return shards


pytestmark = pytest.mark.usefixtures("clean_gin_and_counters")


def test_one_pass_keeps_every_good_record_and_counts_every_loss(bad_shards, caplog):
  gin.parse_config(dp.BINDING_GIN + f'TRAIN_DATA_PATTERN = "{bad_shards["pattern"]}"\n'
                   f'VOCAB_FILE = "{bad_shards["vocab"]}"')
  ds = seqio.get_dataset("flip_img2dataset", task_feature_lengths={"image": S, "targets": L},
                         dataset_split="train", shuffle=False, num_epochs=1,
                         feature_converter=ImageTextFeatureConverter())
  with caplog.at_level(logging.WARNING):
    examples = list(ds.as_numpy_iterator())
  expected = bad_shards["expected"]
  assert len(examples) == expected["ok"] == preprocessors.kept_count("train")
  want = {r: expected.get(r, 0) for r in preprocessors.SKIP_REASONS if r != "ok"}
  assert preprocessors.skipped_counts("train") == want
  assert want["decode_error"] >= 3 and want["damaged_file"] == 2  # the trailing one included
  # The good records themselves came through: their first tokens differ from an empty caption's.
  assert all(ex["texts"][0] != 0 for ex in examples)
  for path in bad_shards["damaged"]:
    hits = [r for r in caplog.records if path in r.getMessage() and "damaged" in r.getMessage()]
    assert len(hits) == 1, [r.getMessage() for r in caplog.records]
  assert not any("00000." in r.getMessage() and "damaged" in r.getMessage()
                 for r in caplog.records)
