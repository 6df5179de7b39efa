r"""Builds the CPU demo's data set: captioned product photos plus a zero-shot split.

The demo has to show FLIP end to end without downloading anything, so it uses
Fashion-MNIST as Debian packages it (`apt-get install -y dataset-fashion-mnist`, MIT):
70,000 real 28x28 grey product photos from Zalando's catalogue in 10 classes.

Fashion-MNIST has labels, not captions. The captions here are *generated from the
label*: many English templates ("a black and white photo of a sneaker.", "ankle boots
for sale.", "my new tote bag.") filled with synonyms ("tee", "jumper", "trainers") and
adjectives. They are synthetic text about real images; they teach the text tower class
words in varied phrasings, which is what zero-shot classification needs, but they are
not crawled alt-text.

  python -m flip_t5x.demo_data --output_dir=demo_data

writes (once; a rerun with the same settings returns at once):

  demo_data/train/demo-00000-of-0000N.tfrecord  training split as img2dataset records
                                                (jpg/txt/key/height/width + label)
  demo_data/captions.txt                        every training caption, one per line
  demo_data/vocab.txt                           small WordPiece vocabulary of the captions
  demo_data/templates.txt                       zero-shot prompt templates ("a photo of a {}.")
  demo_data/zeroshot/class_names.txt            class names, one per line, sorted
  demo_data/zeroshot/CLASS_NAME/NNNNN.png       held-out test images (RGB PNG)
  demo_data/demo_data_complete.json             completion marker (version + settings)

Images are padded with black (the photos' own background) from 28 to 32 pixels so
patch sizes of 4 or 8 divide the side, then resized if --image_size is not 32.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import dataclasses
import json
import sys
from typing import Sequence

from absl import app
from absl import flags

from flip_t5x.data import demo
from flip_t5x.runtime import gin_utils

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defines the CLI flags; only the CLI calls it, so importing the module defines none."""
  flags.DEFINE_string("output_dir", None, "Where the demo data set goes.")
  flags.DEFINE_integer("num_train", 20000, "Training examples (<= 60000).")
  flags.DEFINE_integer("num_eval_per_class", 100, "Zero-shot images per class (<= 1000).")
  flags.DEFINE_integer("image_size", 32, "Image side in pixels (28 = unpadded).")
  flags.DEFINE_integer("seed", 0, "Picks the training images and their captions.")
  flags.DEFINE_integer("examples_per_shard", 5000, "Records per shard.")
  flags.DEFINE_integer("vocab_size", 1000, "WordPiece vocabulary size; 0: no vocab.txt.")
  flags.DEFINE_string("source_dir", demo.FASHION_MNIST_DIR, "Fashion-MNIST idx files.")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required")
  data = demo.prepare(FLAGS.output_dir, num_train=FLAGS.num_train,
                      num_eval_per_class=FLAGS.num_eval_per_class, image_size=FLAGS.image_size,
                      seed=FLAGS.seed, examples_per_shard=FLAGS.examples_per_shard,
                      vocab_size=FLAGS.vocab_size, source_dir=FLAGS.source_dir,
                      progress_stream=sys.stderr)
  summary = dataclasses.asdict(data)
  summary.pop("train_files")
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  define_flags()
  gin_utils.run(main, bad_input=(OSError, ValueError))  # no Fashion-MNIST, a bad size, ...
