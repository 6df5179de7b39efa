"""Learns a lower-case WordPiece vocabulary from captions (the library of `flip_t5x.build_vocab`).

For captions in other languages or small demos, where FLIP's BERT vocabulary fits badly. The
reserved tokens [PAD], [UNK], [CLS], [SEP], [MASK] come first, so id 0 is padding and the file
works as `VOCAB_FILE` for `flip_t5x.data.vocabulary.WordPieceVocabulary` (vocab_size = lines + 1).
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import tensorflow as tf
from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset as bert_vocab

from flip_t5x.data import shard_readers

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def caption_dataset(captions: Optional[str] = None, shards: Optional[str] = None,
                    max_captions: Optional[int] = None) -> tf.data.Dataset:
  """Non-empty captions from text files (one a line) and/or img2dataset shards."""
  parts = []
  if captions:
    files = shard_readers.expand_data_pattern(captions)
    parts.append(tf.data.TextLineDataset(files))
  if shards:
    files = shard_readers.expand_data_pattern(shards)
    reader = shard_readers.READERS[shard_readers.detect_format(files)]
    records = tf.data.Dataset.from_tensor_slices(files).flat_map(reader)
    parts.append(records.map(lambda r: r["text"]))
  if not parts:
    raise ValueError("Give --captions and/or --shards.")
  ds = parts[0]
  for p in parts[1:]:
    ds = ds.concatenate(p)
  valid = lambda t: tf.strings.length(tf.strings.strip(t)) > 0
  ds = ds.filter(valid).map(
      lambda t: tf.strings.unicode_transcode(t, "UTF-8", "UTF-8", errors="replace"))
  if max_captions:
    ds = ds.take(max_captions)
  return ds


def build_vocab(ds: tf.data.Dataset, vocab_size: int, lower_case: bool = True,
                reserved_tokens: Sequence[str] = RESERVED_TOKENS) -> List[str]:
  """WordPiece tokens (reserved first) learnt from a dataset of caption strings."""
  return bert_vocab.bert_vocab_from_dataset(
      ds.batch(1024).prefetch(2), vocab_size=vocab_size, reserved_tokens=list(reserved_tokens),
      bert_tokenizer_params={"lower_case": lower_case}, learn_params={})


def write_vocab(tokens: Sequence[str], path: str) -> None:
  """One token a line (any tf.io.gfile filesystem)."""
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(t + "\n" for t in tokens))
