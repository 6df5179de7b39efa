"""Image preprocessing against the official FLIP code (utils/transform_util.py).

The references here are written independently of flip_t5x, in numpy (PIL and TF's JPEG decoder
for pixels), from the official ops: `_decode_and_center_crop` (evaluation: centred square, TF1 `resize_bicubic`), and
`_decode_and_random_crop_v4` (training: ten (area, aspect) draws, first that fits, centred
fallback, TF2 bicubic `tf.image.resize`).
"""
import io

import gin
import numpy as np
from PIL import Image
import pytest
import seqio
import tensorflow as tf

import tasks
from flip_t5x.data import images
from flip_t5x.data import preprocessors
from flip_t5x.data import vocabulary as vocabulary_lib

MEAN = np.array([0.485, 0.456, 0.406]) * 255
STD = np.array([0.229, 0.224, 0.225]) * 255
# (height, width): landscape, portrait, square, very wide, very tall, tiny.
SHAPES = [(480, 640), (640, 480), (256, 256), (97, 413), (413, 97), (17, 23), (5, 3)]


def _pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
  """Gradients, noise and sharp blocks (so resampling and clipping differences show)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([255 * xx / max(w - 1, 1), 255 * yy / max(h - 1, 1),
                   255.0 * (((xx // 8) + (yy // 8)) % 2)], -1)
  return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buf.getvalue()


def _decode(data: bytes) -> np.ndarray:
  """Whole-image pixels. JPEG through TF's decoder with its default (fast integer) IDCT, as the
  official code decodes; PIL's accurate IDCT differs by ~1 level on average (0.02 normalised)."""
  if data[:3] == b"\xff\xd8\xff":
    return tf.io.decode_jpeg(data, channels=3).numpy().astype(np.float64)
  return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# Reference resamplers (separable weight matrices [out, in]).
def _keys(t: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel with parameter a."""
  t = np.abs(t)
  return np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                  np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))


def _legacy_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
  """TF1 `resize_bicubic` (align_corners=False, half_pixel_centers=False): source x = i * n_in /
  n_out, four taps from floor(x) - 1, clamped to the edge, Keys a = -0.75."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    x = i * n_in / n_out
    base = int(np.floor(x))
    for k in range(-1, 3):
      m[i, min(max(base + k, 0), n_in - 1)] += _keys(np.array(x - (base + k)), -0.75)
  return m


def _tf2_bicubic_weights(n_in: int, n_out: int) -> np.ndarray:
  """TF2 `tf.image.resize(..., BICUBIC)` without antialiasing: half-pixel centres, Keys a = -0.5,
  taps outside the image dropped and the rest renormalised."""
  m = np.zeros((n_out, n_in))
  for i in range(n_out):
    x = (i + 0.5) * n_in / n_out
    taps = np.arange(int(np.floor(x - 2)), int(np.ceil(x + 2)) + 1)
    taps = taps[(taps >= 0) & (taps < n_in)]
    weights = _keys(taps + 0.5 - x, -0.5)
    m[i, taps] = weights / weights.sum()
  return m


def _resize(pixels: np.ndarray, size: int, weights) -> np.ndarray:
  wy, wx = weights(pixels.shape[0], size), weights(pixels.shape[1], size)
  rows = np.tensordot(wy, pixels, axes=1)  # [size, w, 3]
  return np.einsum("owc,pw->opc", rows, wx)


def official_eval_image(data: bytes, size: int, pad: int) -> np.ndarray:
  """The official `_decode_and_center_crop` + `normalize_image`, in numpy."""
  pixels = _decode(data)
  h, w = pixels.shape[:2]
  side = int(np.float32(size / (size + pad)) * np.float32(min(h, w)))
  top, left = ((h - side) + 1) // 2, ((w - side) + 1) // 2
  crop = pixels[top:top + side, left:left + side]
  return (_resize(crop, size, _legacy_bicubic_weights) - MEAN) / STD


# ------------------------------------------------------------------------------------------------
# Evaluation crop.
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("pad", [0, 32])
def test_eval_image_matches_official_center_crop(fmt, pad):
  size = 224
  for k, (h, w) in enumerate(SHAPES):
    if pad and min(h, w) < 8:
      continue  # the official crop would be empty (side 0)
    data = _encode(_pixels(h, w, seed=k), fmt)
    got = preprocessors.eval_image(tf.constant(data), size, pad).numpy()
    want = official_eval_image(data, size, pad)
    diff = np.abs(got - want).mean()
    assert got.shape == (size, size, 3) and diff < 0.01, (fmt, pad, (h, w), diff)


def test_eval_image_is_not_clipped():
  """Bicubic overshoot at sharp edges stays, as in the official code."""
  out = preprocessors.eval_image(tf.constant(_encode(_pixels(64, 80), "PNG")), 224).numpy()
  assert (out < (0 - MEAN) / STD).any() and (out > (255 - MEAN) / STD).any()


def test_eval_crop_rejects_negative_pad():
  with pytest.raises(ValueError, match="eval_pad"):
    preprocessors.eval_image(tf.constant(_encode(_pixels(64, 80), "PNG")), 32, eval_pad=-1)


@pytest.mark.parametrize("pad", [0, 32])
def test_eval_preprocessor_uses_the_official_crop(tmp_path, pad, clean_gin_and_counters):
  """The seqio eval pipeline (flip_t5x.eval, periodic zero-shot, *_seqio tasks) gives the same
  pixels as the reference, with the pad gin binds."""
  gin.bind_parameter("tasks.TaskConfig.eval_pad", pad)
  vocab_file = tmp_path / "vocab.txt"
  vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo"]))
  vocab = vocabulary_lib.WordPieceVocabulary(str(vocab_file))
  encoded = [_encode(_pixels(h, w, seed=k), "JPEG") for k, (h, w) in enumerate(SHAPES[:4])]
  ds = tf.data.Dataset.from_tensor_slices({"image": encoded, "text": [b"a photo"] * len(encoded)})
  ds = tasks.preprocess(ds, {"image": 64, "targets": 8}, {"targets": seqio.Feature(vocab)},
                        train=False)
  got = [ex["image"] for ex in ds.as_numpy_iterator()]
  assert len(got) == len(encoded)
  for data, pixels in zip(encoded, got):
    assert np.abs(pixels - official_eval_image(data, 64, pad)).mean() < 0.01


# ------------------------------------------------------------------------------------------------
# Training crop "v4".
def simulate_crop_v4(hw, size: int, n: int, seed: int = 0, area_range=(0.5, 1.0),
                     aspect_ratio_range=(3 / 4, 4 / 3), log_aspect: bool = True) -> np.ndarray:
  """numpy simulation of `_decode_and_random_crop_v4`'s window: [n, 4] top, left, h, w and a
  fallback flag column. log_aspect=False draws the aspect uniformly (a wrong algorithm)."""
  rng = np.random.default_rng(seed)
  h_img, w_img = hw
  area = rng.uniform(*area_range, (n, 10)) * h_img * w_img
  if log_aspect:
    aspect = np.exp(rng.uniform(*np.log(aspect_ratio_range), (n, 10)))
  else:
    aspect = rng.uniform(*aspect_ratio_range, (n, 10))
  w = np.round(np.sqrt(area * aspect)).astype(int)
  h = np.round(np.sqrt(area / aspect)).astype(int)
  fits = (w <= w_img) & (h <= h_img)
  first = np.argmax(fits, axis=1)
  h, w, ok = h[np.arange(n), first], w[np.arange(n), first], fits.any(axis=1)
  top = np.floor(rng.uniform(size=n) * (h_img - h + 1)).astype(int)
  left = np.floor(rng.uniform(size=n) * (w_img - w + 1)).astype(int)
  side = int(size / (size + 32) * min(h_img, w_img))
  fallback = np.array([((h_img - side) + 1) // 2, ((w_img - side) + 1) // 2, side, side])
  out = np.where(ok[:, None], np.stack([top, left, h, w], 1), fallback)
  return np.concatenate([out, (~ok)[:, None].astype(int)], 1)


def product_windows(hw, size: int, n: int, crop_x_step: int = 1) -> np.ndarray:
  aug = images.TrainAugmentation(crop_x_step=crop_x_step)
  seeds = tf.stack([tf.range(n, dtype=tf.int64), tf.fill([n], tf.constant(11, tf.int64))], 1)
  fn = tf.function(lambda s: tf.map_fn(
      lambda seed: images.crop_window(tf.constant(hw, tf.int64), seed, aug, size), s,
      fn_output_signature=tf.int32))
  return fn(seeds).numpy()


def _ks(a: np.ndarray, b: np.ndarray) -> float:
  """Two-sample Kolmogorov-Smirnov statistic."""
  grid = np.sort(np.concatenate([a, b]))
  cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)
  return float(np.abs(cdf(a) - cdf(b)).max())


def _fits_in_the_image(windows: np.ndarray, hw) -> bool:
  top, left, h, w = windows[:, :4].T
  return bool((top >= 0).all() and (left >= 0).all() and (top + h <= hw[0]).all()
              and (left + w <= hw[1]).all() and (h >= 1).all() and (w >= 1).all())


@pytest.mark.parametrize("hw", [(480, 640), (640, 360)])
def test_crop_v4_statistics_match_the_algorithm(hw):
  n = 4000
  got = product_windows(hw, 224, n)
  sim = simulate_crop_v4(hw, 224, 100_000)
  assert _fits_in_the_image(got, hw)
  sim_fallback = sim[:, 4].astype(bool)
  # A fallback window is the centred square; a random one is exactly where the draws say.
  side = int(224 / 256 * min(hw))
  got_fallback = (got[:, 2] == side) & (got[:, 3] == side) & (
      got[:, 0] == (hw[0] - side + 1) // 2) & (got[:, 1] == (hw[1] - side + 1) // 2)
  rate, sim_rate = got_fallback.mean(), sim_fallback.mean()
  assert abs(rate - sim_rate) <= 4 * np.sqrt(sim_rate * (1 - sim_rate) / n) + 1e-3, (rate, sim_rate)
  g, s = got[~got_fallback], sim[~sim_fallback]
  area = lambda x: x[:, 2] * x[:, 3] / (hw[0] * hw[1])
  aspect = lambda x: x[:, 3] / x[:, 2]
  rel_top = lambda x: (x[:, 0] + 0.5) / (hw[0] - x[:, 2] + 1)
  rel_left = lambda x: (x[:, 1] + 0.5) / (hw[1] - x[:, 3] + 1)
  for name, stat in (("area", area), ("aspect", aspect), ("top", rel_top), ("left", rel_left)):
    assert _ks(stat(g), stat(s)) < 0.04, name  # 5 sigma-ish for n = 4000 against 1e5
    hist_g, edges = np.histogram(stat(g), bins=10)
    hist_s, _ = np.histogram(stat(s), bins=edges)
    np.testing.assert_allclose(hist_g / len(g), hist_s / len(s), atol=0.02, err_msg=name)
  # The comparison can tell: aspect ratios drawn uniformly (not log-uniformly) fail it.
  linear = simulate_crop_v4(hw, 224, 100_000, log_aspect=False)
  assert _ks(aspect(g), aspect(linear[linear[:, 4] == 0])) > 0.04


def test_crop_v4_falls_back_for_extreme_aspect_images():
  for hw in [(100, 1000), (1000, 100)]:  # no area >= 0.5 at aspect 3/4..4/3 fits
    got = product_windows(hw, 224, 200)
    side = int(224 / 256 * 100)
    want = [(hw[0] - side + 1) // 2, (hw[1] - side + 1) // 2, side, side]
    assert (got == want).all(), hw
    assert simulate_crop_v4(hw, 224, 1000)[:, 4].all()
  # A 2:1 image falls back sometimes: at the rate of the algorithm.
  hw, n = (300, 600), 4000
  rate = (product_windows(hw, 224, n)[:, 2:] == int(224 / 256 * 300)).all(1).mean()
  sim_rate = simulate_crop_v4(hw, 224, 100_000)[:, 4].mean()
  assert 0.05 < sim_rate < 0.95
  assert abs(rate - sim_rate) <= 4 * np.sqrt(sim_rate * (1 - sim_rate) / n), (rate, sim_rate)


def test_crop_x_step_is_off_by_default(clean_gin_and_counters):
  windows = product_windows((480, 640), 224, 64,
                            crop_x_step=tasks.TaskConfig().augmentation().crop_x_step)
  assert (windows[:, 1] % 16 != 0).any()


def test_train_image_is_official_crop_and_tf2_bicubic():
  """Crop window, TF2 bicubic resize (no antialias, no clipping) and flip, against numpy."""
  size, hw = 64, (120, 90)
  data = _encode(_pixels(*hw, seed=3), "PNG")
  pixels = _decode(data)
  aug = images.TrainAugmentation()
  flips = []
  for s in range(8):
    seed = tf.constant([s, 5], tf.int64)
    got = images.train_image(tf.constant(data), tf.constant(images.FMT_PNG),
                             tf.constant(hw, tf.int64), size, seed, aug).numpy()
    crop_seed = tf.random.experimental.stateless_split(seed, 2)[0]
    top, left, h, w = images.crop_window(tf.constant(hw), crop_seed, aug, size).numpy()
    want = (_resize(pixels[top:top + h, left:left + w], size, _tf2_bicubic_weights) - MEAN) / STD
    diffs = [np.abs(got - want).mean(), np.abs(got - want[:, ::-1]).mean()]
    assert min(diffs) < 1e-3, diffs
    flips.append(int(np.argmin(diffs)))
  assert 0 < sum(flips) < len(flips)  # both flipped and unflipped crops occur
