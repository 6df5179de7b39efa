"""The contrastive loss against a naive reference, and its numerical behaviour."""
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import losses


def naive_loss(z_img, z_txt, scale):
  z_img, z_txt = np.asarray(z_img, np.float64), np.asarray(z_txt, np.float64)
  logits = scale * z_img @ z_txt.T
  n = len(logits)
  i2t = -np.mean([logits[i, i] - np.log(np.sum(np.exp(logits[i]))) for i in range(n)])
  t2i = -np.mean([logits[i, i] - np.log(np.sum(np.exp(logits[:, i]))) for i in range(n)])
  return (i2t + t2i) / 2


def unit(seed, shape):
  x = jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_matches_naive_reference():
  a, b = unit(0, (16, 8)), unit(1, (16, 8))
  loss, logits = losses.contrastive_loss(a, b, jnp.asarray(14.3))
  np.testing.assert_allclose(loss, naive_loss(a, b, 14.3), rtol=1e-5)
  assert logits.shape == (16, 16)


def test_symmetric_in_images_and_texts():
  a, b = unit(0, (8, 4)), unit(1, (8, 4))
  np.testing.assert_allclose(losses.contrastive_loss(a, b, 10.0)[0],
                             losses.contrastive_loss(b, a, 10.0)[0], rtol=1e-6)


def test_near_zero_for_aligned_distinct_pairs_at_high_scale():
  z = jnp.eye(8)  # distinct, orthogonal embeddings; texts identical to images
  loss, logits = losses.contrastive_loss(z, z, jnp.asarray(100.0))
  assert float(loss) < 1e-6
  i2t, t2i = losses.in_batch_accuracy(logits)
  assert float(i2t) == 1.0 and float(t2i) == 1.0


def test_finite_for_bfloat16_at_max_scale():
  a = unit(0, (64, 32)).astype(jnp.bfloat16)
  b = unit(1, (64, 32)).astype(jnp.bfloat16)
  loss, _ = losses.contrastive_loss(a, b, jnp.asarray(100.0))
  grad = jax.grad(lambda x: losses.contrastive_loss(x, b, 100.0)[0])(a)
  assert np.isfinite(float(loss))
  assert np.all(np.isfinite(np.asarray(grad, np.float32)))
  np.testing.assert_allclose(float(loss), naive_loss(a.astype(jnp.float32),
                                                     b.astype(jnp.float32), 100.0), rtol=1e-3)


def test_in_batch_accuracy_counts_argmax_hits():
  logits = jnp.array([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [0.0, 0.0, 1.0]])
  i2t, t2i = losses.in_batch_accuracy(logits)
  np.testing.assert_allclose(i2t, 2 / 3)   # rows 0 and 2 right
  np.testing.assert_allclose(t2i, 2 / 3)   # columns 0 and 1 right, column 2 picks row 1
