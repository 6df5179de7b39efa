"""Image-text training pipeline on small real img2dataset shards (TFRecord and webdataset tar)."""
import io
import os
import tarfile

import gin
import numpy as np
from PIL import Image
import pytest
import seqio
import tensorflow as tf

import tasks  # pylint: disable=unused-import  (registers the tasks)
from flip_t5x import checkpoints
from flip_t5x.data import images
from flip_t5x.data import preprocessors
from flip_t5x.data import shard_readers
from flip_t5x.data.feature_converters import ImageTextFeatureConverter
from test_train_helpers import ROOT

S, L = 32, 8
TASK = "flip_img2dataset"
# The gin files that bind the macros below to the code that reads them: VOCAB_FILE (the model's)
# and TRAIN_DATA_PATTERN, ZEROSHOT_FOLDER, ... (the tasks').
BINDING_GIN = (f"include '{ROOT}/gin_configs/models/flip_base.gin'\n"
               f"include '{ROOT}/gin_configs/tasks.gin'\n")
WORDS = ["photo", "of", "the", "dog", "cat", "red", "car", "caption", "number", "shard"]


def _image(fmt, mode="RGB", size=(64, 80), seed=0):
  rng = np.random.default_rng(seed)
  grad = np.linspace(0, 255, size[0])[None, :, None]
  a = np.clip(rng.normal(0, 40, (size[1], size[0], 3)) + grad, 0, 255).astype(np.uint8)
  buf = io.BytesIO()
  Image.fromarray(a).convert(mode).save(buf, fmt)
  return buf.getvalue()


def _truncated_jpeg():
  data = _image("JPEG", seed=5)
  return data[:data.index(b"\xff\xda") + 20]  # header + start of scan, no full scan line


def _bomb_png():
  data = bytearray(_image("PNG", seed=6))
  data[16:24] = (30000).to_bytes(4, "big") + (30000).to_bytes(4, "big")  # 9e8 pixels in IHDR
  return bytes(data)


def _records(shard):
  """(image bytes or None, caption bytes or None, expected reason) for one shard."""
  good = [
      (_image("JPEG", seed=1), "ok"), (_image("PNG", "RGBA", (80, 64), 2), "ok"),
      (_image("WEBP", seed=3), "ok"), (_image("GIF", "P", (64, 72), 4), "ok"),
      (_image("JPEG", "L", seed=7), "ok"), (_image("JPEG", "CMYK", seed=8), "ok"),
      (_image("BMP", seed=9), "ok"),
  ]
  recs = [(im, f"a photo caption number {i} shard {shard}".encode(), r)
          for i, (im, r) in enumerate(good)]
  jpg = _image("JPEG", seed=10)
  bad = [
      (None, b"missing image", "empty_image"), (b"", b"zero byte image", "empty_image"),
      (b"<html>not an image</html>", b"html page", "unknown_format"),
      (_truncated_jpeg(), b"truncated jpeg", "decode_error"),
      (b"\xff\xd8\xff\xe0" + b"\x00" * 64, b"jpeg magic then garbage", "decode_error"),
      (_bomb_png(), b"decompression bomb", "too_large"),
      (jpg, b"", "empty_caption"), (jpg, b"   ", "empty_caption"), (jpg, None, "empty_caption"),
      (jpg, b"caf\xe9 \xff\xfe latin-1", "bad_utf8"),
  ]
  out = []
  for i in range(max(len(recs), len(bad))):  # interleaved, a good record last
    out.extend(recs[i:i + 1] + bad[i:i + 1])
  out.append((_image("JPEG", seed=11), f"last caption shard {shard}".encode(), "ok"))
  return out


def _write_tfrecord(path, records):
  with tf.io.TFRecordWriter(path) as w:
    for i, (image, text, _) in enumerate(records):
      feat = {"key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"%09d" % i])),
              "height": tf.train.Feature(int64_list=tf.train.Int64List(value=[64])),
              "width": tf.train.Feature(int64_list=tf.train.Int64List(value=[80])),
              "similarity": tf.train.Feature(float_list=tf.train.FloatList(value=[0.3]))}
      if image is not None:
        feat["jpg"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))
      if text is not None:
        feat["txt"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[text]))
      w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())


def _write_tar(path, records):
  exts = {b"\xff\xd8": "jpg", b"\x89P": "png", b"RI": "webp", b"GI": "gif", b"BM": "bmp"}
  with tarfile.open(path, "w") as tar:
    for i, (image, text, _) in enumerate(records):
      key = f"{i:09d}"
      members = [(f"{key}.json", b'{"key": "%s"}' % key.encode())]
      if image is not None:
        members.insert(0, (f"{key}.{exts.get(image[:2], 'jpg')}", image))
      if text is not None:
        members.append((f"{key}.txt", text))
      for name, data in members:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _vocab_file(directory):
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + [str(i) for i in range(10)]
  tokens += [chr(c) for c in range(ord("a"), ord("z") + 1)]
  tokens += ["##" + chr(c) for c in range(ord("a"), ord("z") + 1)] + [".", ",", "-"]
  path = os.path.join(directory, "vocab.txt")
  with open(path, "w") as f:
    f.write("\n".join(tokens) + "\n")
  return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("shards")
  expected = {}
  for fmt, writer, ext in (("tfrecord", _write_tfrecord, "tfrecord"),
                           ("webdataset", _write_tar, "tar")):
    os.makedirs(root / fmt)
    counts = {}
    for s in range(4):
      recs = _records(s)
      writer(str(root / fmt / f"{s:05d}.{ext}"), recs)
      for _, _, reason in recs:
        counts[reason] = counts.get(reason, 0) + 1
    expected[fmt] = counts
  return {"root": root, "vocab": _vocab_file(str(root)), "expected": expected}


pytestmark = pytest.mark.usefixtures("clean_gin_and_counters")


def _configure(shards, fmt="tfrecord", extra=""):
  ext = "tfrecord" if fmt == "tfrecord" else "tar"
  gin.parse_config(BINDING_GIN + f'TRAIN_DATA_PATTERN = "{shards["root"]}/{fmt}/*.{ext}"\n'
                   f'VOCAB_FILE = "{shards["vocab"]}"\n{extra}')


def _dataset(shuffle=False, seed=None, shard_info=None, num_epochs=1, batch=None):
  ds = seqio.get_dataset(TASK, task_feature_lengths={"image": S, "targets": L},
                         dataset_split="train", shuffle=shuffle, seed=seed,
                         shard_info=shard_info, num_epochs=num_epochs,
                         feature_converter=ImageTextFeatureConverter())
  return ds.batch(batch) if batch else ds


@pytest.mark.parametrize("fmt", ["tfrecord", "webdataset"])
def test_parse_counts_shapes_ranges(shards, fmt):
  _configure(shards, fmt)
  examples = list(_dataset().as_numpy_iterator())
  expected = shards["expected"][fmt]
  assert len(examples) == expected["ok"] == preprocessors.kept_count("train")
  want = {r: expected.get(r, 0) for r in preprocessors.SKIP_REASONS if r != "ok"}
  assert preprocessors.skipped_counts("train") == want
  lo = min((0 - m) / s for m, s in zip(images.MEAN_RGB, images.STDDEV_RGB))
  hi = max((1 - m) / s for m, s in zip(images.MEAN_RGB, images.STDDEV_RGB))
  for ex in examples:
    assert set(ex) == {"images", "texts"}
    assert ex["images"].shape == (S, S, 3) and ex["images"].dtype == np.float32
    assert ex["texts"].shape == (L,) and ex["texts"].dtype == np.int32
    # Unclipped bicubic (as the official code) overshoots [0, 255] by at most 28% of the range
    # (Keys a = -0.5: 1.125^2 + 0.125^2 - 1), ~1.3 normalised units.
    assert lo - 1.3 <= ex["images"].min() and ex["images"].max() <= hi + 1.3
    assert ex["images"].std() > 0.1  # real pixels, not the zero placeholder
    assert ex["texts"][0] != 0 and ex["texts"].max() < 5 + len(WORDS) + 10 + 26 * 2 + 3 + 1


def test_task_dataset_features_before_conversion(shards):
  _configure(shards)
  task = seqio.get_mixture_or_task("flip_laion2b_en")
  ex = next(task.get_dataset({"image": S, "targets": L}, split="train", shuffle=False
                             ).as_numpy_iterator())
  assert set(ex) == {"image", "targets"}
  assert ex["image"].dtype == np.float32 and ex["targets"].dtype == np.int32
  vocab = task.output_features["targets"].vocabulary
  assert vocab.decode(ex["targets"]).startswith("a photo caption number")
  assert vocab.vocab_size == len(open(shards["vocab"]).read().split("\n")) - 1 + 1


@pytest.mark.slow
def test_deterministic_for_a_seed(shards):
  _configure(shards)
  first = list(_dataset(shuffle=True, seed=7, batch=4).take(4).as_numpy_iterator())
  again = list(_dataset(shuffle=True, seed=7, batch=4).take(4).as_numpy_iterator())
  other = list(_dataset(shuffle=True, seed=8, batch=4).take(4).as_numpy_iterator())
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a["images"], b["images"])
    np.testing.assert_array_equal(a["texts"], b["texts"])
  assert any(not np.array_equal(a["images"], b["images"]) for a, b in zip(first, other))


def test_random_crop_differs_per_epoch(shards):
  _configure(shards)
  ds = _dataset(shuffle=False, seed=3, num_epochs=2)
  examples = list(ds.as_numpy_iterator())
  n = len(examples) // 2
  np.testing.assert_array_equal(examples[0]["texts"], examples[n]["texts"])
  assert not np.array_equal(examples[0]["images"], examples[n]["images"])


@pytest.mark.slow
def test_hosts_read_disjoint_shards(shards):
  _configure(shards, "webdataset")

  def texts(ds):
    return {tuple(ex["texts"]) for ex in ds.as_numpy_iterator()}

  host0 = texts(_dataset(shard_info=seqio.ShardInfo(0, 2)))
  host1 = texts(_dataset(shard_info=seqio.ShardInfo(1, 2)))
  everything = texts(_dataset())
  assert host0 and host1 and not host0 & host1
  assert host0 | host1 == everything
  files = shard_readers.expand_data_pattern(tasks.config().train_data_pattern)
  assert len(files) == 4


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["tfrecord", "webdataset"])
def test_resume_position(shards, tmp_path, fmt):
  _configure(shards, fmt)
  it = iter(_dataset(shuffle=True, seed=11, num_epochs=None, batch=3))
  for _ in range(5):
    next(it)
  files = checkpoints.save_input_position(it, str(tmp_path / "ckpt"))
  # The counters keep moving while tf.data prefetches in the background: compare with the values
  # the checkpoint holds, not with a later reading.
  reader = tf.train.load_checkpoint(files.counters)
  saved = [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
           if k.startswith("train_skipped/")]
  assert len(saved) == 1
  counts_at_save = {r: int(v) for r, v in zip(preprocessors.SKIP_REASONS, saved[0]) if r != "ok"}
  reference = [next(it) for _ in range(6)]  # spans an epoch boundary

  preprocessors.reset_counts()
  resumed = iter(_dataset(shuffle=True, seed=11, num_epochs=None, batch=3))
  assert checkpoints.restore_input_position(resumed, str(tmp_path / "ckpt"))
  assert preprocessors.skipped_counts() == counts_at_save
  for want in reference:
    got = next(resumed)
    np.testing.assert_array_equal(got["texts"].numpy(), want["texts"].numpy())
    np.testing.assert_array_equal(got["images"].numpy(), want["images"].numpy())
  fresh = _dataset(shuffle=True, seed=11, num_epochs=None, batch=3)
  assert not checkpoints.restore_input_position(iter(fresh), str(tmp_path / "missing"))
  with pytest.raises(TypeError, match="tf.data iterator"):  # t5x reads another key than numpy's
    checkpoints.save_input_position(fresh.as_numpy_iterator(), str(tmp_path / "numpy"))


def test_missing_or_empty_pattern_is_a_clear_error(shards, tmp_path):
  gin.parse_config(BINDING_GIN + f'TRAIN_DATA_PATTERN = "{tmp_path}/nothing/*.tfrecord"\n'
                   f'VOCAB_FILE = "{shards["vocab"]}"')
  with pytest.raises(ValueError, match="nothing/\\*.tfrecord"):
    _dataset()
  gin.clear_config()
  gin.parse_config(BINDING_GIN + f'VOCAB_FILE = "{shards["vocab"]}"')
  with pytest.raises(ValueError, match="TRAIN_DATA_PATTERN"):
    _dataset()
  with pytest.raises(ValueError, match="Empty data pattern"):
    shard_readers.expand_data_pattern(" , ")


def test_comma_separated_patterns_and_gin_pixel_limit(shards):
  root = shards["root"]
  gin.parse_config(
      BINDING_GIN +
      f'tasks.TaskConfig.train_data_pattern = "{root}/tfrecord/00000.tfrecord, '
      f'{root}/tfrecord/0000[12].tfrecord"\n'
      f'VOCAB_FILE = "{shards["vocab"]}"\n'
      'tasks.TaskConfig.max_image_pixels = 4000')
  assert list(_dataset().as_numpy_iterator()) == []  # every 64x80+ image is over the limit
  assert preprocessors.skipped_counts()["too_large"] >= 3 * shards["expected"]["tfrecord"]["ok"] // 4


def test_eval_image_center_crop():
  data = tf.constant(_image("PNG", size=(100, 50)))
  out = preprocessors.eval_image(data, 32)
  assert out.shape == (32, 32, 3) and out.dtype == tf.float32
  np.testing.assert_allclose(out.numpy(), preprocessors.eval_image(data, 32).numpy())


def test_image_header_sizes():
  for fmt, mode in (("JPEG", "RGB"), ("PNG", "RGBA"), ("GIF", "P"), ("WEBP", "RGB"),
                    ("BMP", "RGB")):
    data = tf.constant(_image(fmt, mode, size=(53, 37)))
    code = images.image_format(data)
    assert code != images.FMT_UNKNOWN
    assert images.image_header_size(data, code).numpy().tolist() == [37, 53]


def test_crop_window_left_edge_steps_keep_area_and_aspect():
  exact = images.TrainAugmentation(crop_x_step=1)
  stepped = images.TrainAugmentation(crop_x_step=16)
  hw = tf.constant([480, 640], tf.int64)
  lefts = []
  for s in range(20):
    seed = tf.constant([s, 7], tf.int64)
    top, left, h, w = images.crop_window(hw, seed, exact, 224).numpy().tolist()
    top2, left2, h2, w2 = images.crop_window(hw, seed, stepped, 224).numpy().tolist()
    assert (top2, h2, w2) == (top, h, w)  # same sampled box: area and aspect ratio unchanged
    assert left2 % 16 == 0 and left - 15 <= left2 <= left and left2 + w2 <= 640
    assert 0.5 * 480 * 640 * 0.98 <= h * w <= 480 * 640 and 3 / 4 * 0.97 <= w / h <= 4 / 3 * 1.03
    lefts.append(left)
  assert any(x % 16 for x in lefts)  # the exact windows were not aligned by chance
  with pytest.raises(ValueError, match="crop_x_step"):
    images.TrainAugmentation(crop_x_step=0)
