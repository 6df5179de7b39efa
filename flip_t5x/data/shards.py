"""img2dataset-format TFRecord shards from captioned images (the library of `flip_t5x.make_shards`).

The FLIP training tasks read the TFRecord shards that img2dataset writes for LAION
(`tf.train.Example`s with `jpg`, `txt`, `key`, `height`, `width` and optional extra columns).
`write_shards` writes the same format from your own images (`Item`s: a path, bytes, an array or a
PIL image, and a caption), so a private collection trains through the very tasks the LAION runs
use. `items_from_images_dir` (sidecar `foo.txt` captions) and `items_from_captions_file` (a
CSV/TSV/Parquet table) make the items from files.

Images are re-encoded to JPEG by default so every record looks like an img2dataset `jpg`; broken
images and missing captions are skipped, logged and counted (`Summary.skipped`), never raised.
Shards are written under hidden temporary names and renamed only once all are complete, so an
interrupted run never leaves a shard set that looks finished.
"""
import csv
import dataclasses
import io
import json
import os
import random
from collections.abc import Sized
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, TextIO, Tuple, Union

from absl import logging
import numpy as np
from PIL import Image
import tensorflow as tf

from flip_t5x import progress as progress_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
JPEG_QUALITY = 95
# Every skip reason, so the summary always has the same keys.
SKIP_REASONS = ("missing_image", "unreadable_image", "missing_caption", "unreadable_caption")

ImageSource = Union[str, os.PathLike, bytes, np.ndarray, Image.Image]
ExtraValue = Union[str, bytes, int, float]


@dataclasses.dataclass(frozen=True)
class Item:
  """One input example.

  Attributes:
    image: a file path, encoded image bytes, a uint8 array ([H, W] or [H, W, C]) or a
      PIL image.
    caption: the caption; None or blank means it is missing (the item is skipped).
    source: a name for log messages (defaults to the path when `image` is one).
    extra: extra columns stored next to `jpg`/`txt` (img2dataset's
      `--save_additional_columns`); str/bytes become bytes features, int int64, float
      float.
    caption_error: why the caption could not be read, if it could not.
  """
  image: Optional[ImageSource]
  caption: Optional[str]
  source: str = ""
  extra: Mapping[str, ExtraValue] = dataclasses.field(default_factory=dict)
  caption_error: Optional[str] = None


@dataclasses.dataclass
class Summary:
  """What `write_shards` did; `to_json` is the CLI's last output line."""
  written: int
  skipped: Dict[str, int]
  shards: int
  output_dir: str
  files: List[str] = dataclasses.field(default_factory=list)

  def to_json(self) -> str:
    return json.dumps({"written": self.written, "skipped": self.skipped,
                       "shards": self.shards, "output_dir": self.output_dir})


class SkipItem(Exception):
  """An input that cannot become a record; `reason` is one of SKIP_REASONS."""

  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


# ---------------------------------------------------------------------------
# Inputs.


def _is_remote(path: str) -> bool:
  return "://" in path


def _check_exists(path: str, what: str) -> None:
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{what} {path!r} does not exist")


def items_from_images_dir(images_dir: str) -> Iterator[Item]:
  """Yields one Item per image under `images_dir` (recursive, sorted), caption from foo.txt."""
  _check_exists(images_dir, "--images_dir")
  if not tf.io.gfile.isdir(images_dir):
    raise NotADirectoryError(f"--images_dir {images_dir!r} is not a directory")
  for dirpath, dirnames, filenames in tf.io.gfile.walk(images_dir):
    dirnames.sort()
    names = set(filenames)
    for name in sorted(filenames):
      stem, ext = os.path.splitext(name)
      if ext.lower() not in IMAGE_EXTENSIONS:
        continue
      path = os.path.join(dirpath, name)
      caption, error = None, None
      if stem + ".txt" in names:
        try:
          with tf.io.gfile.GFile(os.path.join(dirpath, stem + ".txt"), "rb") as f:
            caption = f.read().decode("utf-8-sig")
        except (UnicodeDecodeError, OSError, tf.errors.OpError) as e:
          error = f"{type(e).__name__}: {e}"
      yield Item(image=path, caption=caption, source=path, caption_error=error)


def _read_table(captions_file: str) -> Iterator[dict]:
  """Rows of a .csv or .parquet file as dicts."""
  ext = os.path.splitext(captions_file)[1].lower()
  if ext == ".parquet":
    try:
      import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from e
    with tf.io.gfile.GFile(captions_file, "rb") as f:
      table = pq.read_table(io.BytesIO(f.read()))
    yield from table.to_pylist()
  elif ext in (".csv", ".tsv"):
    with tf.io.gfile.GFile(captions_file, "rb") as f:
      text = f.read().decode("utf-8-sig")
    yield from csv.DictReader(io.StringIO(text, newline=""),
                              delimiter="\t" if ext == ".tsv" else ",")
  else:
    raise ValueError(f"--captions_file must end in .csv, .tsv or .parquet, got {captions_file!r}")


def items_from_captions_file(captions_file: str,
                             path_column: str = "path",
                             caption_column: str = "caption",
                             extra_columns: Sequence[str] = ()) -> Iterator[Item]:
  """Yields one Item per row of a CSV/TSV/Parquet table of image paths and captions.

  Relative paths are taken relative to the table's folder, so a table travels with its
  images.
  """
  _check_exists(captions_file, "--captions_file")
  base = os.path.dirname(captions_file)
  wanted = [path_column, caption_column, *extra_columns]
  for i, row in enumerate(_read_table(captions_file)):
    if i == 0:
      missing = [c for c in wanted if c not in row]
      if missing:
        raise ValueError(f"{captions_file}: no column(s) {missing}; columns are {sorted(row)}")
    path = row[path_column]
    path = "" if path is None else str(path).strip()
    if path and not (os.path.isabs(path) or _is_remote(path)):
      path = os.path.join(base, path)
    caption = row[caption_column]
    if caption is not None and not isinstance(caption, str):
      caption = str(caption)
    extra = {c: row[c] for c in extra_columns if row[c] is not None}
    yield Item(image=path or None, caption=caption,
               source=path or f"{captions_file} row {i + 1}", extra=extra)


# ---------------------------------------------------------------------------
# Encoding.


def _flatten_to_rgb(img: Image.Image) -> Image.Image:
  """RGB like img2dataset's records; transparent pixels become white, not black."""
  if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
    img = img.convert("RGBA")
    background = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, img).convert("RGB")
  return img.convert("RGB") if img.mode != "RGB" else img


def _resize_to_max_side(img: Image.Image, max_side: Optional[int]) -> Image.Image:
  """Shrinks (never enlarges) so the longer side is at most `max_side`."""
  if not max_side or max(img.size) <= max_side:
    return img
  scale = max_side / max(img.size)
  size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
  return img.resize(size, Image.Resampling.BICUBIC)


def _open_image(image: ImageSource) -> Tuple[Image.Image, Optional[bytes]]:
  """Returns (decoded PIL image, original encoded bytes or None)."""
  if isinstance(image, Image.Image):
    return image, None
  if isinstance(image, np.ndarray):
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
      raise SkipItem("unreadable_image", "array image must be uint8 [H, W] or [H, W, C], "
                     f"got {image.dtype} {image.shape}")
    if image.ndim == 3 and image.shape[-1] == 1:
      image = image[..., 0]
    return Image.fromarray(image), None
  if isinstance(image, (bytes, bytearray)):
    data = bytes(image)
  else:
    path = os.fspath(image)
    try:
      with tf.io.gfile.GFile(path, "rb") as f:
        data = f.read()
    except tf.errors.NotFoundError as e:
      raise SkipItem("missing_image", f"no such file: {path}") from e
    except (OSError, tf.errors.OpError) as e:
      raise SkipItem("unreadable_image", f"cannot read {path}: {e}") from e
  try:
    img = Image.open(io.BytesIO(data))
    img.load()  # Decodes every pixel: truncated or corrupt files fail here, not in training.
  except Exception as e:  # pylint: disable=broad-except  # PIL raises many types.
    raise SkipItem("unreadable_image", f"cannot decode image: {type(e).__name__}: {e}") from e
  if img.width < 1 or img.height < 1:
    raise SkipItem("unreadable_image", "image has no pixels")
  return img, data


def encode_image(image: ImageSource,
                 image_format: str = "jpeg",
                 max_side: Optional[int] = None,
                 quality: int = JPEG_QUALITY) -> Tuple[bytes, int, int]:
  """Returns (encoded bytes, height, width) for a record's `jpg` feature.

  Args:
    image: path, encoded bytes, uint8 array or PIL image.
    image_format: "jpeg" re-encodes to RGB JPEG; "keep" keeps JPEG/PNG bytes as they are
      (unless resized) and stores anything else as PNG.
    max_side: if set, shrink so the longer side is at most this.
    quality: JPEG quality.

  Raises:
    SkipItem: the image is missing or cannot be decoded.
  """
  if image_format not in ("jpeg", "keep"):
    raise ValueError(f"image_format must be 'jpeg' or 'keep', got {image_format!r}")
  img, data = _open_image(image)
  original_format = img.format
  resized = _resize_to_max_side(img, max_side)
  if (image_format == "keep" and data is not None and resized is img
      and original_format in ("JPEG", "PNG")):
    return data, img.height, img.width
  out = io.BytesIO()
  try:
    if image_format == "jpeg" or (image_format == "keep" and original_format == "JPEG"):
      _flatten_to_rgb(resized).save(out, format="JPEG", quality=quality)
    else:
      if resized.mode not in ("L", "LA", "RGB", "RGBA"):  # 8-bit modes every decoder reads.
        resized = resized.convert("RGBA" if resized.has_transparency_data else "RGB")
      resized.save(out, format="PNG")
  except Exception as e:  # pylint: disable=broad-except
    raise SkipItem("unreadable_image", f"cannot encode image: {type(e).__name__}: {e}") from e
  return out.getvalue(), resized.height, resized.width


def _feature(value: ExtraValue) -> tf.train.Feature:
  if isinstance(value, (bool, int, np.integer)):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
  if isinstance(value, (float, np.floating)):
    return tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
  if isinstance(value, str):
    value = value.encode("utf-8")
  if isinstance(value, (bytes, bytearray)):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(value)]))
  raise ValueError(f"unsupported extra column value {value!r}: use str, bytes, int or float")


def make_example(key: str, image_bytes: bytes, caption: str, height: int, width: int,
                 extra: Optional[Mapping[str, ExtraValue]] = None) -> tf.train.Example:
  """An img2dataset-format record."""
  features = {
      "jpg": _feature(image_bytes),
      "txt": _feature(caption),
      "key": _feature(key),
      "height": _feature(int(height)),
      "width": _feature(int(width)),
  }
  for name, value in (extra or {}).items():
    if name in features:
      raise ValueError(f"extra column {name!r} clashes with a standard feature")
    features[name] = _feature(value)
  return tf.train.Example(features=tf.train.Features(feature=features))


# ---------------------------------------------------------------------------
# Writing.


def shard_name(prefix: str, index: int, num_shards: int) -> str:
  return f"{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord"


def _tmp_name(prefix: str, index: int) -> str:
  # Hidden and ending in .tmp: no `PREFIX-*` or `*.tfrecord` pattern picks it up.
  return f".{prefix}-{index:05d}.tfrecord.tmp"


def write_shards(items: Iterable[Item],
                 output_dir: str,
                 prefix: str = "data",
                 examples_per_shard: int = 10000,
                 image_format: str = "jpeg",
                 max_side: Optional[int] = None,
                 quality: int = JPEG_QUALITY,
                 overwrite: bool = False,
                 progress_stream: Optional[TextIO] = None) -> Summary:
  """Encodes `items` into `output_dir/PREFIX-xxxxx-of-yyyyy.tfrecord`.

  An item's `key` is its position in `items` (9 decimal digits, like img2dataset), so
  keys stay stable when some items are skipped. Skips are logged and counted, never
  raised. Shards appear under their final names only after all were written.

  Args:
    items: the inputs, in the order to write them.
    output_dir: created if needed (local or any tf.io.gfile filesystem).
    prefix: shard file name prefix.
    examples_per_shard: records per shard (the last one may have fewer).
    image_format: "jpeg" or "keep", see `encode_image`.
    max_side: optional longest-side limit in pixels.
    quality: JPEG quality.
    overwrite: replace existing `PREFIX-*-of-*.tfrecord` shards in `output_dir`;
      without it their presence is an error (a different shard count would mix sets).
    progress_stream: where to show progress (inputs read, rate, ETA when `items` has a
      length); None shows none.

  Returns:
    A Summary; `files` lists the shard paths.
  """
  if examples_per_shard < 1:
    raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard}")
  if not prefix or "/" in prefix:
    raise ValueError(f"prefix must be a non-empty file name part, got {prefix!r}")
  tf.io.gfile.makedirs(output_dir)
  old = tf.io.gfile.glob(os.path.join(output_dir, f"{prefix}-?????-of-?????.tfrecord"))
  if old and not overwrite:
    raise FileExistsError(
        f"{output_dir} already has {len(old)} {prefix}-*.tfrecord shard(s); "
        "pass overwrite=True (--overwrite) or pick another prefix/output_dir")

  skipped = {reason: 0 for reason in SKIP_REASONS}
  tmp_paths: List[str] = []
  writer = None
  written = 0
  progress = None
  if progress_stream is not None:
    total = len(items) if isinstance(items, Sized) else None
    progress = progress_lib.Progress(f"writing shards to {output_dir}", total,
                                     format_value=progress_lib.format_count("inputs"),
                                     stream=progress_stream)
  try:
    for index, item in enumerate(items):
      if progress is not None:
        progress.update(1)
      try:
        caption = (item.caption or "").strip()
        if item.caption_error:
          raise SkipItem("unreadable_caption", f"cannot read caption: {item.caption_error}")
        if not caption:
          raise SkipItem("missing_caption", "missing or empty caption")
        if item.image is None or (isinstance(item.image, str) and not item.image):
          raise SkipItem("missing_image", "no image path")
        data, height, width = encode_image(item.image, image_format, max_side, quality)
      except SkipItem as e:
        skipped[e.reason] = skipped.get(e.reason, 0) + 1
        logging.warning("skipping %s (%s): %s", item.source or f"item {index}", e.reason, e)
        continue
      example = make_example(f"{index:09d}", data, caption, height, width, item.extra)
      if writer is None:
        tmp_paths.append(os.path.join(output_dir, _tmp_name(prefix, len(tmp_paths))))
        writer = tf.io.TFRecordWriter(tmp_paths[-1])
      writer.write(example.SerializeToString())
      written += 1
      if written % examples_per_shard == 0:
        writer.close()
        writer = None
    if writer is not None:
      writer.close()
      writer = None
    if progress is not None:
      progress.close()
  except BaseException:
    if writer is not None:
      writer.close()
    for path in tmp_paths:
      if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    raise

  for path in old:
    tf.io.gfile.remove(path)
  files = []
  for i, path in enumerate(tmp_paths):
    final = os.path.join(output_dir, shard_name(prefix, i, len(tmp_paths)))
    tf.io.gfile.rename(path, final, overwrite=True)
    files.append(final)
  logging.info("wrote %d examples in %d shard(s) to %s; skipped %s",
               written, len(files), output_dir, skipped)
  return Summary(written=written, skipped=skipped, shards=len(files),
                 output_dir=output_dir, files=files)


def shuffled(items: Iterable[Item], seed: int) -> List[Item]:
  """Items in a seeded random order: folder trees are often sorted by class, and
  contrastive batches want a mix."""
  items = list(items)
  random.Random(seed).shuffle(items)
  return items
