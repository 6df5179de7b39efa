r"""Turns a folder of captioned images into img2dataset-format TFRecord shards.

The FLIP training tasks read the TFRecord shards that img2dataset writes for LAION
(`tf.train.Example`s with `jpg`, `txt`, `key`, `height`, `width` and optional extra
columns). This tool writes the same format from your own images, so a private
collection trains through the very tasks and binaries the LAION runs use.

Two ways to give the captions:

  # Sidecar captions: every foo.jpg (searched recursively) has its caption in foo.txt.
  python -m flip_t5x.make_shards --images_dir=/data/photos \
      --output_dir=/data/shards --prefix=photos

  # A CSV or Parquet table with columns path,caption (paths relative to the table's
  # folder, or absolute).
  python -m flip_t5x.make_shards --captions_file=/data/captions.csv \
      --output_dir=/data/shards --prefix=photos --max_side=512

Images are re-encoded to JPEG (quality 95) by default so every record looks like an
img2dataset `jpg` (RGB; transparency is flattened onto white). `--image_format=keep`
stores JPEG and PNG bytes untouched (other formats become PNG). Broken images and
missing or empty captions are skipped, logged per file on stderr and counted; the last
line on stdout is a JSON summary:

  {"written": 998, "skipped": {"missing_image": 0, "unreadable_image": 1, ...},
   "shards": 1, "output_dir": "/data/shards"}

Shards are written under hidden temporary names and renamed to
`PREFIX-00000-of-0000K.tfrecord` only once all of them are complete, so an interrupted
run never leaves a shard set that looks finished.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import sys
from typing import Sequence

from absl import app
from absl import flags

from flip_t5x.data import shards
from flip_t5x.runtime import gin_utils


FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI flags; only the CLI calls it, so importing the module defines none."""
  flags.DEFINE_string(
      "images_dir", None, "Folder searched recursively for images; foo.jpg's caption is foo.txt.")
  flags.DEFINE_string(
      "captions_file", None, "CSV/TSV/Parquet table with an image path and a caption per row.")
  flags.DEFINE_string("path_column", "path", "Image path column of --captions_file.")
  flags.DEFINE_string("caption_column", "caption", "Caption column of --captions_file.")
  flags.DEFINE_list(
      "save_additional_columns", [], "Other --captions_file columns to store in each record.")
  flags.DEFINE_string("output_dir", None, "Where the shards go.")
  flags.DEFINE_string("prefix", "data", "Shard names: PREFIX-00000-of-0000K.tfrecord.")
  flags.DEFINE_integer("examples_per_shard", 10000, "Records per shard.")
  flags.DEFINE_enum(
      "image_format", "jpeg", ["jpeg", "keep"],
      "jpeg: re-encode to RGB JPEG like img2dataset; keep: keep JPEG/PNG bytes as they are.")
  flags.DEFINE_integer("jpeg_quality", shards.JPEG_QUALITY, "JPEG quality when re-encoding.")
  flags.DEFINE_integer("max_side", None, "If set, shrink images so the longer side fits.")
  flags.DEFINE_bool("shuffle", True, "Write the examples in a seeded random order.")
  flags.DEFINE_integer("seed", 0, "Seed for --shuffle.")
  flags.DEFINE_bool("overwrite", False, "Replace existing PREFIX-* shards in --output_dir.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if (FLAGS.images_dir is None) == (FLAGS.captions_file is None):
    raise app.UsageError("pass exactly one of --images_dir and --captions_file")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  if FLAGS.images_dir is not None:
    items = shards.items_from_images_dir(FLAGS.images_dir)
  else:
    items = shards.items_from_captions_file(FLAGS.captions_file, FLAGS.path_column,
                                            FLAGS.caption_column, FLAGS.save_additional_columns)
  if FLAGS.shuffle:
    items = shards.shuffled(items, FLAGS.seed)
  summary = shards.write_shards(items, FLAGS.output_dir, prefix=FLAGS.prefix,
                                examples_per_shard=FLAGS.examples_per_shard,
                                image_format=FLAGS.image_format, max_side=FLAGS.max_side,
                                quality=FLAGS.jpeg_quality, overwrite=FLAGS.overwrite,
                                progress_stream=sys.stderr)
  print(summary.to_json(), flush=True)
  if summary.written == 0:
    raise gin_utils.Failed("no examples written: every input was skipped or there were none")


if __name__ == "__main__":
  define_flags()
  # A missing input, an unreadable table, existing shards without --overwrite, no Parquet reader.
  gin_utils.run(main, bad_input=(OSError, ValueError, ImportError))
