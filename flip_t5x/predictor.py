"""Inference API for trained or imported FLIP checkpoints: embeddings, zero-shot, similarity.

    predictor = FlipPredictor.from_checkpoint(
        "/models/flip_b16", "gin_configs/models/flip_vit_b16.gin",
        gin_bindings=['VOCAB_FILE = "/data/vocab.txt"'])
    z = predictor.encode_images(["cat.jpg", pil_image, uint8_array])      # [3, E], L2-normalised
    probs = predictor.zero_shot(["cat.jpg"], ["cat", "dog"])              # [1, 2]
    cos = predictor.similarity(["cat.jpg"], ["a photo of a cat"])         # [1, 1]

Images get the evaluation preprocessing of the data pipeline (`preprocessors.eval_image`: the
official centre crop, TF1 bicubic resize, ImageNet mean/std), and the towers run through the
evaluation library's encoder (`flip_t5x.evaluation.encoder`: jitted once, fixed-size padded
batches), so predictions match `flip_t5x.eval`'s.
"""
from __future__ import annotations

import io
import os
import re
from typing import Any, Iterable, List, Optional, Sequence, Tuple, Union

import gin
import jax
import numpy as np
import tensorflow as tf

from flip_t5x import checkpoints
from flip_t5x import models
from flip_t5x import network
from flip_t5x import pretrained
from flip_t5x import xla_options as xla_options_lib
from flip_t5x.data import preprocessors
from flip_t5x.data import prompts
from flip_t5x.data import vocabulary as vocabulary_lib
from flip_t5x.evaluation import encoder as encoder_lib
from flip_t5x.evaluation import scoring
from flip_t5x.evaluation import zeroshot
from flip_t5x.runtime import gin_utils
import tasks

PyTree = Any
# A path (str/PathLike), encoded bytes, a PIL image, or pixels [H, W], [H, W, 1|3|4] in [0, 255].
ImageLike = Any


class ImageError(ValueError):
  """An input image that cannot be read or decoded; the message names it."""


class VocabularyError(ValueError):
  """No vocabulary, one that cannot be read, or one with more ids than the model's table."""


# What `FlipPredictor.from_checkpoint` / `from_pretrained` raise for bad input (a path without a
# checkpoint, a bad release name, a bad vocabulary): binaries declare these to `gin_utils.run`.
LOAD_ERRORS = (*pretrained.RESOLVE_ERRORS, VocabularyError)


def _is_single_image(images: Any) -> bool:
  if isinstance(images, (str, bytes, os.PathLike)):
    return True
  if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
    return np.ndim(images) in (2, 3)
  return type(images).__module__.startswith("PIL.")


def _as_list(images: Any) -> List[ImageLike]:
  """A list of images; a single image or a 4-D pixel batch is accepted too."""
  if _is_single_image(images):
    return [images]
  if isinstance(images, (np.ndarray, jax.Array)) and np.ndim(images) == 4:
    return list(np.asarray(images))
  return list(images)


def image_name(image: ImageLike, index: int) -> str:
  """How errors and the command line name an input: its path, else its position."""
  if isinstance(image, (str, os.PathLike)):
    return os.fspath(image)
  return f"image #{index}"


def _pixels_to_uint8_rgb(pixels: Any, name: str) -> np.ndarray:
  x = np.asarray(pixels)
  if x.ndim == 2:
    x = x[:, :, None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3, 4) or min(x.shape[:2]) < 1:
    raise ImageError(f"{name}: expected pixels [H, W], [H, W, 1|3|4], got shape {x.shape}")
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  x = x[:, :, :3]
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.number) or not np.all(np.isfinite(x)):
      raise ImageError(f"{name}: pixels must be finite numbers in [0, 255], got {x.dtype}")
    x = np.clip(np.round(x), 0, 255).astype(np.uint8)
  return np.ascontiguousarray(x)


def _tf_error_text(error: Exception) -> str:
  """TensorFlow's reason without the graph-node decoration ("{{function_node ...}}", "[[...]]")."""
  text = getattr(error, "message", str(error)).strip().splitlines()[0]
  return re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text).strip()


def _pil_to_uint8_rgb(image: Any, name: str) -> np.ndarray:
  try:
    return np.asarray(image.convert("RGB"))
  except Exception as e:  # PIL raises OSError, ValueError, DecompressionBombError, ...
    raise ImageError(f"{name}: cannot convert PIL image: {e}") from e


class FlipPredictor:
  """Embeds images and texts with a FLIP model and scores them against each other.

  Images go through the image tower `batch_size` at a time, texts `text_batch_size` at a time,
  both compiled with `xla_options` (None: `XlaOptions()`).
  """

  def __init__(self, model: models.FlipModel, params: PyTree,
               vocabulary: Optional[vocabulary_lib.WordPieceVocabulary] = None,
               batch_size: int = 32, text_batch_size: int = 256, *,
               xla_options: Optional[xla_options_lib.XlaOptions] = None,
               template_set: str = prompts.DEFAULT_TEMPLATE_SET, eval_pad: int = 0):
    """`template_set`: the zero-shot templates by default ("7", "80" or a file); `eval_pad`: the
    evaluation crop's (`preprocessors.eval_image`)."""
    if batch_size < 1 or text_batch_size < 1:
      raise ValueError(f"batch sizes must be >= 1, got {batch_size}, {text_batch_size}")
    self.model = model
    self.module: network.FlipTwoTower = model.module
    self.params = jax.device_put(params)  # once, not per call
    self.batch_size = int(batch_size)
    self.text_batch_size = int(text_batch_size)
    self._vocabulary = vocabulary
    if vocabulary is not None:
      self._check_vocabulary(vocabulary)
    shapes = model.input_shapes()
    self.image_size = int(shapes["images"][1])
    self.text_length = int(shapes["texts"][1])
    self.embed_dim = int(self.module.embed_dim)
    self._encoder = encoder_lib.encoder_for(model, xla_options)
    self.logit_scale = float(self.module.apply({"params": self.params},
                                               method=network.FlipTwoTower.scale))
    self.template_set = str(template_set)
    self.eval_pad = int(eval_pad)
    size = self.image_size
    self._decode = tf.function(lambda data: preprocessors.eval_image(data, size, self.eval_pad),
                               input_signature=[tf.TensorSpec([], tf.string)])
    self._class_embedding_cache = {}

  # -------------------------------------------------------------------------------- construction
  @classmethod
  def from_checkpoint(cls, path: str, gin_file: Union[str, Sequence[str]],
                      gin_bindings: Sequence[str] = (), vocab_file: Optional[str] = None,
                      batch_size: int = 32, text_batch_size: int = 256) -> "FlipPredictor":
    """A predictor for a checkpoint: MODEL_DIR (latest step) or checkpoint_<step>, written by
    flip_t5x or t5x (orbax or msgpack; `checkpoints.locate` lists the formats).

    The gin files give the model (`MODEL`), the vocabulary (macro `VOCAB_FILE`, unless
    `vocab_file` is given), the default zero-shot templates (`ZEROSHOT_TEMPLATES`) and the eval
    crop (`tasks.TaskConfig.eval_pad`). This replaces the process's gin configuration.
    """
    gin_files = [gin_file] if isinstance(gin_file, (str, os.PathLike)) else list(gin_file)
    gin.clear_config()
    model = gin_utils.parse_gin_flags_for_model(
        ["."], [os.fspath(f) for f in gin_files], gin_bindings, finalize_config=False)
    config = tasks.config()
    if vocab_file is not None:
      vocab = vocabulary_lib.WordPieceVocabulary(vocab_file) if vocab_file else None
    else:
      try:
        vocab = config.vocabulary()
      except ValueError:
        vocab = None  # images still work; encode_texts explains what is missing
    params = checkpoints.load_params(path, model)
    return cls(model, params, vocab, batch_size=batch_size, text_batch_size=text_batch_size,
               template_set=config.zeroshot_templates, eval_pad=config.eval_pad)

  @classmethod
  def from_pretrained(cls, name: str, cache_dir: Optional[str] = None,
                      sha256: Optional[str] = None, **kwargs: Any) -> "FlipPredictor":
    """A predictor for a released model (`pretrained.list_models()`) or its archive's path,
    downloaded and imported into the cache on first use; `kwargs` go to `from_checkpoint`.
    """
    found = pretrained.resolve(name, cache_dir=cache_dir, sha256=sha256)
    return cls.from_checkpoint(found.checkpoint, found.gin_file, **kwargs)

  def _check_vocabulary(self, vocab: vocabulary_lib.WordPieceVocabulary) -> None:
    """Ids beyond the embedding table would be clamped silently by the gather: refuse them."""
    try:
      size = vocab.vocab_size
    except (tf.errors.OpError, OSError, ValueError) as e:  # ValueError: an empty file
      raise VocabularyError(f"cannot read the WordPiece vocabulary {vocab.vocab_file!r}: "
                            f"{_tf_error_text(e)}") from e
    if size > self.module.text.vocab_size:
      raise VocabularyError(
          f"vocabulary {vocab.vocab_file} has {size} ids (lines + 1) but the model's "
          f"text tower has vocab_size {self.module.text.vocab_size}: wrong VOCAB_FILE or gin file?")

  @property
  def vocabulary(self) -> vocabulary_lib.WordPieceVocabulary:
    if self._vocabulary is None:
      raise VocabularyError(
          "No WordPiece vocabulary: set the gin macro VOCAB_FILE (e.g. gin_bindings="
          "['VOCAB_FILE = \"/path/vocab.txt\"']) or pass vocab_file= to from_checkpoint.")
    return self._vocabulary

  # -------------------------------------------------------------------------------------- images
  def _image_bytes(self, image: ImageLike, name: str) -> bytes:
    if isinstance(image, (str, os.PathLike)):
      try:
        with tf.io.gfile.GFile(os.fspath(image), "rb") as f:
          return f.read()
      except (tf.errors.OpError, OSError) as e:
        path = os.fspath(image)
        dangling = os.path.islink(path) and not os.path.exists(path)  # listed, but "no such file"
        reason = f"dangling link to {os.readlink(path)}" if dangling else _tf_error_text(e)
        raise ImageError(f"{name}: cannot read file: {reason}") from e
    if isinstance(image, (bytes, bytearray)):
      return bytes(image)
    if type(image).__module__.startswith("PIL."):
      pixels = _pil_to_uint8_rgb(image, name)
    else:
      pixels = _pixels_to_uint8_rgb(image, name)
    # Lossless and uncompressed: the pipeline's own decode + resize then runs unchanged.
    return tf.io.encode_png(pixels, compression=0).numpy()

  def preprocess_image(self, image: ImageLike, name: Optional[str] = None) -> np.ndarray:
    """One image -> float32 [S, S, 3], the evaluation preprocessing. Raises ImageError."""
    name = name or image_name(image, 0)
    data = self._image_bytes(image, name)
    if not data:
      raise ImageError(f"{name}: empty file")
    try:
      return self._decode(tf.constant(data)).numpy()
    except tf.errors.OpError as tf_error:
      # Formats TensorFlow cannot decode (TIFF, some WebP/BMP variants) may still open in PIL.
      try:
        from PIL import Image  # pylint: disable=g-import-not-at-top
        with Image.open(io.BytesIO(data)) as im:
          pixels = _pil_to_uint8_rgb(im, name)
      except Exception:  # not an image PIL knows either: report TensorFlow's reason
        raise ImageError(f"{name}: cannot decode image: {_tf_error_text(tf_error)}") from tf_error
      return self._decode(tf.constant(self._image_bytes(pixels, name))).numpy()

  def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
    """Preprocessed images float32 [N, S, S, 3] -> L2-normalised embeddings [N, E]."""
    pixels = np.asarray(pixels, np.float32)
    want = (self.image_size, self.image_size, 3)
    if pixels.ndim != 4 or pixels.shape[1:] != want:
      raise ValueError(f"encode_pixels expects [N, {want[0]}, {want[1]}, 3] preprocessed images, "
                       f"got {pixels.shape}")
    return self._encoder.encode_images(self.params, pixels, self.batch_size)

  def encode_images(self, images: Union[ImageLike, Iterable[ImageLike]]) -> np.ndarray:
    """Images (paths, bytes, PIL images or uint8 pixel arrays) -> embeddings [N, E].

    Raises ImageError naming the first image that cannot be read.
    """
    images = _as_list(images)
    out = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      pixels = [self.preprocess_image(im, image_name(im, start + i)) for i, im in enumerate(chunk)]
      out.append(self.encode_pixels(np.stack(pixels)))
    return np.concatenate(out) if out else np.zeros((0, self.embed_dim), np.float32)

  # --------------------------------------------------------------------------------------- texts
  def tokenize(self, texts: Sequence[str]) -> np.ndarray:
    """Strings -> int32 [N, L] WordPiece ids, truncated or 0-padded to the model's text length."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
      return np.zeros((0, self.text_length), np.int32)
    ids = self.vocabulary.encode_tf(tf.constant(texts))
    ids = ids[:, :self.text_length].to_tensor(default_value=0,
                                               shape=[len(texts), self.text_length])
    return ids.numpy().astype(np.int32)

  def encode_tokens(self, tokens: np.ndarray) -> np.ndarray:
    """int32 [N, L] ids -> L2-normalised embeddings [N, E]."""
    tokens = np.asarray(tokens, np.int32)
    if tokens.ndim != 2 or tokens.shape[1] != self.text_length:
      raise ValueError(f"encode_tokens expects [N, {self.text_length}] ids, got {tokens.shape}")
    return self._encoder.encode_texts(self.params, tokens, self.text_batch_size)

  def encode_texts(self, texts: Union[str, Sequence[str]]) -> np.ndarray:
    """Strings -> L2-normalised embeddings [N, E]."""
    return self.encode_tokens(self.tokenize(texts))

  # ------------------------------------------------------------------------------------- scoring
  def class_embeddings(self, class_names: Sequence[str],
                       templates: Optional[Sequence[str]] = None) -> np.ndarray:
    """[C, E] zero-shot class embeddings (CLIP protocol; templates default to `template_set`)."""
    templates = tuple(prompts.templates(self.template_set) if templates is None else
                      ([templates] if isinstance(templates, str) else templates))
    key = (tuple(class_names), templates)
    if key not in self._class_embedding_cache:
      self._class_embedding_cache[key] = zeroshot.class_embeddings(
          self.encode_texts, list(class_names), list(templates))
    return self._class_embedding_cache[key]

  def probabilities(self, image_embeddings: np.ndarray, other_embeddings: np.ndarray,
                    axis: int = -1) -> np.ndarray:
    """softmax(logit_scale * cosine) over `axis` (-1: over the texts/classes of each image)."""
    logits = self.logit_scale * (scoring.l2_normalize(image_embeddings)
                                 @ scoring.l2_normalize(other_embeddings).T)
    logits = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=axis, keepdims=True)

  def zero_shot(self, images: Union[ImageLike, Iterable[ImageLike]], class_names: Sequence[str],
                templates: Optional[Sequence[str]] = None) -> np.ndarray:
    """[N, C] class probabilities per image: softmax of logit_scale * cosine similarity."""
    if not class_names:
      raise ValueError("zero_shot needs at least one class name")
    return self.probabilities(self.encode_images(images),
                              self.class_embeddings(class_names, templates))

  def similarity(self, images: Union[ImageLike, Iterable[ImageLike]],
                 texts: Union[str, Sequence[str]]) -> np.ndarray:
    """[N_images, N_texts] cosine similarities."""
    return self.encode_images(images) @ self.encode_texts(texts).T


def top_k(probs: np.ndarray, k: int) -> List[List[Tuple[int, float]]]:
  """Per row, the k (index, probability) pairs with the highest probability, best first."""
  k = max(1, min(int(k), probs.shape[-1]))
  order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  return [[(int(j), float(row[j])) for j in idx] for row, idx in zip(probs, order)]
