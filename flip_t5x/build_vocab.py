r"""Builds a lower-case WordPiece vocabulary from captions (for other languages or small demos).

    python -m flip_t5x.build_vocab --captions='/data/captions/*.txt' --vocab_size=8000 \
        --output=/data/vocab.txt
    python -m flip_t5x.build_vocab --shards='/data/laion/*.tfrecord' --max_captions=2000000 \
        --vocab_size=30000 --output=/data/vocab.txt

`--captions`: text files, one caption per line; `--shards`: img2dataset TFRecord or webdataset tar
shards (their captions are read). The reserved tokens [PAD], [UNK], [CLS], [SEP], [MASK] come first,
so id 0 is padding. Point gin's VOCAB_FILE at the output; the model's vocab_size is its lines + 1.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf
from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset as bert_vocab

from flip_t5x.data import sources

RESERVED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def define_flags() -> None:
  """The command's flags; defined only when run as a binary, so importing this module is free."""
  flags.DEFINE_string("captions", None, "Comma-separated globs of caption text files.")
  flags.DEFINE_string("shards", None, "Comma-separated globs of img2dataset shards.")
  flags.DEFINE_string("tfrecords", None, "Alias of --shards.")
  flags.DEFINE_integer("vocab_size", 30522, "Target vocabulary size (approximate).")
  flags.DEFINE_string("output", None, "Output vocabulary file, one token a line.")
  flags.DEFINE_bool("lower_case", True, "Lower-case and strip accents (FLIP: True).")
  flags.DEFINE_integer("max_captions", None, "Use at most this many captions.")


def caption_dataset(captions: Optional[str] = None, shards: Optional[str] = None,
                    max_captions: Optional[int] = None) -> tf.data.Dataset:
  """Non-empty captions from text files and/or img2dataset shards."""
  parts = []
  if captions:
    files = sources.expand_data_pattern(captions)
    parts.append(tf.data.TextLineDataset(files))
  if shards:
    files = sources.expand_data_pattern(shards)
    reader = sources.READERS[sources.detect_format(files)]
    parts.append(tf.data.Dataset.from_tensor_slices(files).flat_map(reader).map(lambda r: r["text"]))
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
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("".join(t + "\n" for t in tokens))


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.output:
    raise app.UsageError("--output is required.")
  ds = caption_dataset(f.captions, f.shards or f.tfrecords, f.max_captions)
  tokens = build_vocab(ds, f.vocab_size, f.lower_case)
  write_vocab(tokens, f.output)
  logging.info("Wrote %d tokens to %s (model vocab_size = %d).", len(tokens), f.output,
               len(tokens) + 1)
  print(f"wrote {len(tokens)} tokens to {f.output}; vocab_size = {len(tokens) + 1}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
