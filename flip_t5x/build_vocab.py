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

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from flip_t5x.data import vocab_builder
from flip_t5x.runtime import gin_utils


def define_flags() -> None:
  """The command's flags; defined only when run as a binary, so importing this module is free."""
  flags.DEFINE_string("captions", None, "Comma-separated globs of caption text files.")
  flags.DEFINE_string("shards", None, "Comma-separated globs of img2dataset shards.")
  flags.DEFINE_string("tfrecords", None, "Alias of --shards.")
  flags.DEFINE_integer("vocab_size", 30522, "Target vocabulary size (approximate).")
  flags.DEFINE_string("output", None, "Output vocabulary file, one token a line.")
  flags.DEFINE_bool("lower_case", True, "Lower-case and strip accents (FLIP: True).")
  flags.DEFINE_integer("max_captions", None, "Use at most this many captions.")


def main(argv: Sequence[str]) -> None:
  del argv
  f = flags.FLAGS
  if not f.output:
    raise app.UsageError("--output is required.")
  ds = vocab_builder.caption_dataset(f.captions, f.shards or f.tfrecords, f.max_captions)
  tokens = vocab_builder.build_vocab(ds, f.vocab_size, f.lower_case)
  vocab_builder.write_vocab(tokens, f.output)
  logging.info("Wrote %d tokens to %s (model vocab_size = %d).", len(tokens), f.output,
               len(tokens) + 1)
  print(f"wrote {len(tokens)} tokens to {f.output}; vocab_size = {len(tokens) + 1}")


if __name__ == "__main__":
  define_flags()
  gin_utils.run(main)
