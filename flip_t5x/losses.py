"""FLIP's symmetric contrastive (InfoNCE) loss over the global batch."""
from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp


def contrastive_logits(z_img: jax.Array, z_txt: jax.Array, scale: jax.Array) -> jax.Array:
  """[N, N] image-text logits in float32; under jit the N spans every device's shard."""
  return scale * jnp.einsum("id,td->it", z_img.astype(jnp.float32), z_txt.astype(jnp.float32))


def contrastive_loss(z_img: jax.Array, z_txt: jax.Array, scale: jax.Array
                     ) -> Tuple[jax.Array, jax.Array]:
  """Mean of image->text and text->image cross-entropy with matching pairs on the diagonal.

  Written with logsumexp so large scales (up to 100) and bfloat16 embeddings stay finite.
  Returns (loss, logits).
  """
  logits = contrastive_logits(z_img, z_txt, scale)
  diag = jnp.diagonal(logits)
  loss_i2t = jnp.mean(jax.nn.logsumexp(logits, axis=1) - diag)
  loss_t2i = jnp.mean(jax.nn.logsumexp(logits, axis=0) - diag)
  return 0.5 * (loss_i2t + loss_t2i), logits


def in_batch_accuracy(logits: jax.Array) -> Tuple[jax.Array, jax.Array]:
  """Top-1 retrieval accuracy within the batch: (image->text, text->image)."""
  target = jnp.arange(logits.shape[0])
  i2t = jnp.mean((jnp.argmax(logits, axis=1) == target).astype(jnp.float32))
  t2i = jnp.mean((jnp.argmax(logits, axis=0) == target).astype(jnp.float32))
  return i2t, t2i
