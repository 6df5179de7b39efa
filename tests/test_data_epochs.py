"""Passes over the training shards: a new order each pass, mixing at pass boundaries, exact resume.

The shards are written by the project's own writer (`flip_t5x.data.shards`), 32 records in 7
TFRecord files of 5 (the last of 2), each caption naming its record.
"""
import itertools

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

import tasks  # pylint: disable=unused-import  (registers the tasks)
import test_data_pipeline as dp
from flip_t5x import checkpoints
from flip_t5x.data import shards as shard_writer
from flip_t5x.data import preprocessors
from flip_t5x.data.feature_converters import ImageTextFeatureConverter

TASK = "flip_img2dataset"
S, L = 16, 4
RECORDS = 32
PER_SHARD = 5
LETTERS = "abcdefghijklmnopqrstuvwxyz"

pytestmark = pytest.mark.usefixtures("clean_gin_and_counters")


def _caption(i):
  return f"photo {LETTERS[i // 26]}{LETTERS[i % 26]}"  # WordPiece: photo, letter, ##letter


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("epochs")
  rng = np.random.default_rng(0)
  items = [shard_writer.Item(image=rng.integers(0, 256, (20, 24, 3), dtype=np.uint8),
                             caption=_caption(i)) for i in range(RECORDS)]
  summary = shard_writer.write_shards(items, str(root / "data"), prefix="t",
                                      examples_per_shard=PER_SHARD)
  assert summary.written == RECORDS and summary.shards == 7
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "photo"]
  tokens += list(LETTERS) + ["##" + c for c in LETTERS]
  vocab = root / "vocab.txt"
  vocab.write_text("\n".join(tokens) + "\n")
  return {"pattern": str(root / "data" / "*.tfrecord"), "vocab": str(vocab),
          "files": summary.files}


def _configure(shards, buffer, cycle=3, extra=""):
  gin.parse_config(dp.BINDING_GIN + f'TRAIN_DATA_PATTERN = "{shards["pattern"]}"\n'
                   f'VOCAB_FILE = "{shards["vocab"]}"\n'
                   f"tasks.TaskConfig.record_shuffle_buffer_size = {buffer}\n"
                   f"tasks.TaskConfig.interleave_cycle_length = {cycle}\n{extra}")


def _captions(n, seed=0, shard_info=None, shuffle=True):
  """The first `n` captions of the source's stream (the records as the source yields them)."""
  source = seqio.get_mixture_or_task(TASK).source
  ds = source.get_dataset(split="train", shuffle=shuffle, seed=seed, shard_info=shard_info)
  return [ex["text"].decode() for ex in ds.take(n).as_numpy_iterator()]


def _passes(stream, size):
  return [stream[i:i + size] for i in range(0, len(stream), size)]


def _all_captions(indices=range(RECORDS)):
  return sorted(_caption(i) for i in indices)


def test_every_pass_holds_every_record_once_in_a_new_order(shards):
  _configure(shards, buffer=1)  # no record shuffle: pass boundaries stay exact
  passes = _passes(_captions(4 * RECORDS), RECORDS)
  for p in passes:
    assert sorted(p) == _all_captions()
  for a, b in itertools.combinations(passes, 2):
    assert a != b


def test_shuffle_buffer_mixes_neighbouring_passes(shards):
  buffer = RECORDS // 2
  _configure(shards, buffer=buffer)
  stream = _captions(4 * RECORDS)
  # A record's second copy comes out before some record's first: passes 1 and 2 mix.
  first_pass = stream[:RECORDS]
  assert len(set(first_pass)) < RECORDS
  # The buffer holds `buffer` records, so output j was read at input position < j + buffer:
  # the first k * RECORDS - buffer + 1 outputs hold no record more than k times.
  for k in (1, 2, 3):
    head = stream[:k * RECORDS - buffer + 1]
    assert max(head.count(c) for c in set(head)) <= k
  # Numbering each record's copies by pass, every pass still holds every record once, in new
  # orders.
  seen = {}
  passes = [[], [], []]
  for c in stream:
    seen[c] = seen.get(c, 0) + 1
    if seen[c] <= 3:
      passes[seen[c] - 1].append(c)
  assert min(seen.values()) >= 3
  assert all(sorted(p) == _all_captions() for p in passes)
  assert len({tuple(p) for p in passes}) == 3


def test_same_seed_same_stream_other_seed_other(shards):
  _configure(shards, buffer=8)
  first = _captions(3 * RECORDS, seed=5)
  assert first == _captions(3 * RECORDS, seed=5)
  assert first != _captions(3 * RECORDS, seed=6)


def test_hosts_read_their_own_files_every_pass(shards):
  _configure(shards, buffer=1)
  hosts = []
  for index in range(2):
    # Host i reads files i, i + 2, ...: 4 files (17 records) and 3 files (15 records).
    size = sum(min(PER_SHARD, RECORDS - PER_SHARD * f) for f in range(index, 7, 2))
    passes = _passes(_captions(3 * size, seed=1, shard_info=seqio.ShardInfo(index, 2)), size)
    want = _all_captions(i for i in range(RECORDS) if (i // PER_SHARD) % 2 == index)
    assert all(sorted(p) == want for p in passes)
    assert len({tuple(p) for p in passes}) == 3
    hosts.append(set(passes[0]))
  assert not hosts[0] & hosts[1] and sorted(hosts[0] | hosts[1]) == _all_captions()


def test_official_order_sorted_files_every_pass(shards):
  # shuffle_files off + one file at a time + no buffer: the sorted files over and over, as the
  # official pipeline reads them before its shuffle buffer.
  _configure(shards, buffer=1, cycle=1,
             extra="tasks.TaskConfig.shuffle_files = False")
  in_files = _captions(RECORDS, shuffle=False)
  assert in_files == [_caption(i) for i in range(RECORDS)]
  assert _captions(3 * RECORDS) == in_files * 3


def test_empty_pass_ends_the_stream(shards, tmp_path):
  for i in range(2):
    with tf.io.TFRecordWriter(str(tmp_path / f"empty-{i}.tfrecord")):
      pass
  gin.parse_config(dp.BINDING_GIN + f'TRAIN_DATA_PATTERN = "{tmp_path}/*.tfrecord"\n')
  assert _captions(10) == []


def _batches(seed):
  ds = seqio.get_dataset(TASK, task_feature_lengths={"image": S, "targets": L},
                         dataset_split="train", shuffle=True, seed=seed, num_epochs=None,
                         feature_converter=ImageTextFeatureConverter())
  return iter(ds.batch(4))


def _same(got, want):
  np.testing.assert_array_equal(got["texts"].numpy(), want["texts"].numpy())
  np.testing.assert_array_equal(got["images"].numpy(), want["images"].numpy())


@pytest.mark.slow
def test_resume_mid_second_pass_continues_the_stream_exactly(shards, tmp_path):
  _configure(shards, buffer=8, cycle=2)
  saved_after = 12  # 48 records: mid pass 2
  it = _batches(seed=3)
  for _ in range(saved_after):
    next(it)
  directory = str(tmp_path / "checkpoint_12")
  checkpoints.save_input_position(it, directory)
  reference = [next(it) for _ in range(3 * RECORDS // 4)]  # to mid pass 5

  preprocessors.reset_counts()
  resumed = _batches(seed=3)
  assert checkpoints.restore_input_position(resumed, directory)
  for want in reference:
    _same(next(resumed), want)

  uninterrupted = _batches(seed=3)
  for _ in range(saved_after):
    next(uninterrupted)
  for want in reference:
    _same(next(uninterrupted), want)
  # The continuation covers passes 2 to 5, each pass with every record.
  texts = np.concatenate([b["texts"].numpy() for b in reference])
  assert len({tuple(t) for t in texts}) == RECORDS
