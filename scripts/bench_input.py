r"""Input-pipeline benchmark: FLIP's training pipeline vs raw JPEG decode + resize.

Writes synthetic 480-px-short-side JPEGs (noise over smooth gradients, so sizes are realistic) with
captions into img2dataset-style TFRecord shards, then measures images/s on one core and on all
cores of
  - raw: `tf.io.decode_jpeg` + `tf.image.resize` to 224x224 (the recipe's resize method, FLIP's
    bicubic by default) from bytes in memory (the limit);
  - pipeline: `seqio.get_dataset("flip_img2dataset", ...)` (read shards, shuffle, validate,
    random-resized-crop, flip, normalise, tokenise, feature conversion); with --crop_x_steps=1,16
    once per `tasks.TaskConfig.crop_x_step` value (keys `pipeline_crop_x_step_<v>_...`).
Configurations are measured in alternating rounds and the medians reported, so a noisy machine
biases raw and pipeline alike; `*_cpu_ms_per_img_*` (process CPU time per image, all threads) is
the figure to compare on a machine shared with other work, where throughput follows the load.
The last line printed is one JSON object. Target: pipeline >= 80% of raw.

    python scripts/bench_input.py [--num_images=256] [--seconds=5] [--rounds=3] [--vocab_file=...]
        [--crop_x_steps=1,16]
"""
from __future__ import annotations

import gc
import io
import json
import os
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

_NUM_IMAGES = flags.DEFINE_integer("num_images", 256, "Synthetic images to write.")
_SECONDS = flags.DEFINE_float("seconds", 5.0, "Measuring time per configuration and round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternating rounds; medians are reported.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Crop size.")
_CROP_X_STEPS = flags.DEFINE_list(
    "crop_x_steps", [], "Measure the pipeline once per tasks.TaskConfig.crop_x_step value, in "
    "the same alternating rounds (default: only the configured value).")
_VOCAB = flags.DEFINE_string("vocab_file", None, "WordPiece vocab (default: the shipped BERT "
                             "vocabulary the recipes use).")

WORDS = ("a photo of the dog cat car tree beach sunset city street red blue green small large old "
         "new man woman child playing running on in with at night view").split()


def _synthetic_jpeg(rng: np.random.Generator, short: int = 480) -> bytes:
  long = int(short * rng.choice([1.0, 4 / 3, 1.5, 16 / 9]))
  h, w = (short, long) if rng.random() < 0.7 else (long, short)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  base = np.stack([127 + 100 * np.sin(xx / rng.uniform(20, 200) + rng.uniform(0, 6)),
                   127 + 100 * np.cos(yy / rng.uniform(20, 200)),
                   127 + 100 * np.sin((xx + yy) / rng.uniform(30, 300))], -1)
  img = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(img).save(buf, "JPEG", quality=90)
  return buf.getvalue()


def _write_shards(directory: str, num_images: int, num_shards: int = 8):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = [_synthetic_jpeg(rng) for _ in range(num_images)]
  for s in range(num_shards):
    with tf.io.TFRecordWriter(os.path.join(directory, f"{s:05d}.tfrecord")) as w:
      for i in range(s, num_images, num_shards):
        caption = " ".join(rng.choice(WORDS, rng.integers(4, 20))).encode()
        feat = {"jpg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[images[i]])),
                "txt": tf.train.Feature(bytes_list=tf.train.BytesList(value=[caption])),
                "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"%09d" % i]))}
        w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
  return images


def _options(threads: int):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return options


def _rate(ds, seconds: float, batch: int = 32) -> tuple:
  """(images/s, process CPU milliseconds per image) over `seconds` after a warm-up."""
  it = iter(ds.batch(batch).prefetch(2))
  for _ in range(3):  # warm up (tracing, file opening, buffers)
    next(it)
  n, start, cpu_start = 0, time.perf_counter(), time.process_time()
  while time.perf_counter() - start < seconds:
    next(it)
    n += batch
  rate = n / (time.perf_counter() - start)
  cpu_ms = 1000 * (time.process_time() - cpu_start) / n
  del it
  gc.collect()  # stop this iterator's threads before the next configuration runs
  return rate, cpu_ms


def main(argv):
  del argv
  import gin  # pylint: disable=g-import-not-at-top
  import seqio  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tasks  # pylint: disable=g-import-not-at-top
  from flip_t5x.data.feature_converters import ImageTextFeatureConverter  # pylint: disable=g-import-not-at-top

  size = _SIZE.value
  cores = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as tmp:
    images = _write_shards(tmp, _NUM_IMAGES.value)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    gin.parse_config(f"include '{root}/gin_configs/models/flip_base.gin'\n"  # binds VOCAB_FILE
                     f"include '{root}/gin_configs/tasks.gin'\n"  # binds TRAIN_DATA_PATTERN
                     f'TRAIN_DATA_PATTERN = "{tmp}/*.tfrecord"')
    if _VOCAB.value:  # else the shipped BERT vocabulary, as the recipes use
      gin.parse_config(f'VOCAB_FILE = "{_VOCAB.value}"')

    def raw(threads):
      ds = tf.data.Dataset.from_tensor_slices(images).repeat()
      method = tasks.config().resize_method  # the recipe's resize
      ds = ds.map(lambda b: tf.image.resize(tf.io.decode_jpeg(b, channels=3), [size, size],
                                            method=method), num_parallel_calls=threads)
      return ds.with_options(_options(threads))

    def pipeline(threads, crop_x_step):
      if crop_x_step is not None:
        gin.bind_parameter("tasks.TaskConfig.crop_x_step", crop_x_step)
      ds = seqio.get_dataset("flip_img2dataset",
                             task_feature_lengths={"image": size, "targets": 32},
                             dataset_split="train", shuffle=True, seed=0, num_epochs=None,
                             feature_converter=ImageTextFeatureConverter())
      return ds.with_options(_options(threads))

    result = {"image_short_side": 480, "crop": size, "cores": cores,
              "mean_jpeg_kb": round(float(np.mean([len(b) for b in images])) / 1024, 1)}
    configs = (("one_core", 1), ("all_cores", cores))
    steps = {"pipeline": None}
    if _CROP_X_STEPS.value:
      steps = {f"pipeline_crop_x_step_{v}": int(v) for v in _CROP_X_STEPS.value}
    rates = {(kind, label): [] for kind in ("raw", *steps) for label, _ in configs}
    for _ in range(_ROUNDS.value):
      for label, threads in configs:
        rates["raw", label].append(_rate(raw(threads), _SECONDS.value))
        for kind, step in steps.items():
          rates[kind, label].append(_rate(pipeline(threads, step), _SECONDS.value))
    result["rounds"] = _ROUNDS.value
    for label, _ in configs:
      r = float(np.median([x[0] for x in rates["raw", label]]))
      result[f"raw_decode_resize_img_per_s_{label}"] = round(r, 1)
      result[f"raw_cpu_ms_per_img_{label}"] = round(
          float(np.median([x[1] for x in rates["raw", label]])), 3)
      for kind in steps:
        p = float(np.median([x[0] for x in rates[kind, label]]))
        result[f"{kind}_img_per_s_{label}"] = round(p, 1)
        result[f"{kind}_vs_raw_{label}"] = round(p / r, 3)
        result[f"{kind}_cpu_ms_per_img_{label}"] = round(
            float(np.median([x[1] for x in rates[kind, label]])), 3)
    result["target_met"] = all(result[f"{kind}_vs_raw_{k}"] >= 0.8
                               for kind in steps for k in ("one_core", "all_cores"))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
