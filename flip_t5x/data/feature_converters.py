"""Task features -> model features for image-text batches.

Tasks emit `image` (float32 [H, W, 3], normalised) and `targets` (int32 WordPiece ids). The text is
called `targets` so that seqio/t5x evaluators, which decode with the `targets` vocabulary, find it.
`TASK_FEATURE_LENGTHS = {"image": 224, "targets": 32}`: the image "length" is its side in pixels.
"""
from __future__ import annotations

from typing import Mapping

import seqio
import tensorflow as tf


class ImageTextFeatureConverter(seqio.FeatureConverter):
  """Renames `image`/`targets` to the model's `images`/`texts`, padding text to its length.

  Examples are never packed (a contrastive pair is one example); `pack=True`, t5x's default, is
  rejected with an explanation. Extra features (e.g. a zero-shot `label`) go through
  `passthrough_features`.
  """

  TASK_FEATURES = {
      "image": seqio.FeatureConverter.FeatureSpec(dtype=tf.float32, rank=3),
      "targets": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  MODEL_FEATURES = {
      "images": seqio.FeatureConverter.FeatureSpec(dtype=tf.float32, rank=3),
      "texts": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32),
  }
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, pack: bool = False, **kwargs):
    if pack:
      raise ValueError(
          "FLIP image-text examples cannot be packed: set `pack=False` in the DatasetConfig "
          "(e.g. --gin.train/utils.DatasetConfig.pack=False; FLIP's run files already do).")
    super().__init__(pack=False, **kwargs)

  def _convert_features(self, ds: tf.data.Dataset,
                        task_feature_lengths: Mapping[str, int]) -> tf.data.Dataset:
    length = task_feature_lengths["targets"]
    size = task_feature_lengths["image"]
    passthrough = list(self._passthrough_features)

    def convert(ex):
      image = tf.ensure_shape(ex["image"], [size, size, 3])
      text = ex["targets"][:length]
      text = tf.pad(text, [[0, length - tf.shape(text)[0]]])
      text = tf.ensure_shape(text, [length])
      out = {"images": image, "texts": text}
      out.update({k: ex[k] for k in passthrough})
      return out

    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> Mapping[str, int]:
    lengths = {"images": task_feature_lengths["image"], "texts": task_feature_lengths["targets"]}
    lengths.update({k: task_feature_lengths[k] for k in self._passthrough_features})
    return lengths
