"""Fast in-process checks: LR schedule, decay mask, sharding rules, checkpoint helpers."""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from flip_t5x import checkpoints
from flip_t5x import train_state
from flip_t5x.runtime import optimizers
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import trainer
import test_train_helpers as h


@pytest.fixture(scope="module")
def model():
  return h.gin_model()


def test_schedule_linear_scaling_warmup_cosine():
  """Steps counted from ImageNet epochs as the official train.py does: 19 per epoch at 65,536."""
  warm = optimizers.epochs_to_steps(40, 65536)
  total = optimizers.epochs_to_steps(10000, 65536)
  assert (warm, total) == (760, 190_000)
  s = optimizers.warmup_cosine_schedule(4e-6, 65536, total_steps=total, warmup_steps=warm)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(warm)), 1.024e-3, rtol=1e-6)
  np.testing.assert_allclose(float(s(warm / 2)), 0.512e-3, rtol=1e-6)
  np.testing.assert_allclose(float(s((warm + total) / 2)), 0.512e-3, rtol=1e-4)
  assert float(s(total)) < 1e-12
  with pytest.raises(TypeError, match="total_steps"):
    optimizers.warmup_cosine_schedule(1e-3, 8, total_steps="abc")
  with pytest.raises(ValueError, match="longer than training"):
    optimizers.warmup_cosine_schedule(1e-3, 8, total_steps=2, warmup_steps=3)


def test_decay_mask(model):
  """The official mask (utils/opt_util.py): biases, LayerNorm scales and position embeddings are
  exempt; the CLS token and logit_scale decay. decay_min_ndim=2 keeps only matrices."""
  shapes = train_state.abstract_params_and_axes(model, model.input_shapes())[0]
  mask = optimizers.weight_decay_mask(shapes)
  assert mask["text_tower"]["token_embedding"] and mask["image_tower"]["projection"]["kernel"]
  assert not mask["text_tower"]["pos_embedding"]
  assert mask["logit_scale"] and mask["image_tower"]["cls"]
  blk = mask["image_tower"]["encoder"]["block_0"]
  assert blk["attention"]["query"]["kernel"] and not blk["attention"]["query"]["bias"]
  assert not blk["pre_mlp_layer_norm"]["scale"] and not blk["pre_mlp_layer_norm"]["bias"]
  matrices = optimizers.weight_decay_mask(shapes, decay_min_ndim=2)
  assert not matrices["logit_scale"] and not matrices["image_tower"]["cls"]
  assert matrices["text_tower"]["token_embedding"]
  assert not matrices["image_tower"]["encoder"]["block_0"]["attention"]["query"]["bias"]


def test_rules_and_state_partitioning():
  rules = dict(partitioning.standard_logical_axis_rules())
  assert rules["batch"] == "data" and rules["mlp"] == "model" and rules["patch"] is None
  assert rules["proj"] is None and rules["embed"] is None
  assert partitioning.partition_state_spec(P(None, "model"), (1000, 32), 4) == P("data", "model")
  assert partitioning.partition_state_spec(P(), (6,), 4) == P()
  assert partitioning.partition_state_spec(P(), (), 4) == P()


@pytest.mark.slow
def test_amos_builds_and_updates(model):
  tx = optimizers.unwrap(optimizers.amos(learning_rate=0.01))
  part = partitioning.PjitPartitioner()
  layout = train_state.StateLayout(model, tx, part, model.input_shapes(2))
  state = layout.initialize(jax.random.PRNGKey(0))
  grads = jax.tree_util.tree_map(np.ones_like, state.params)
  updates, _ = tx.update(grads, state.opt_state, state.params)
  assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree_util.tree_leaves(updates))


@pytest.mark.slow
def test_save_load_resize_and_errors(model, tmp_path):
  part = partitioning.PjitPartitioner()
  layout = train_state.StateLayout(model, optimizers.unwrap(optimizers.adamw(1e-3)), part,
                                   model.input_shapes())
  params = layout.initialize(jax.random.PRNGKey(0)).params
  path = checkpoints.save_params(params, str(tmp_path), step=7)
  assert checkpoints.checkpoint_step(str(tmp_path)) == 7 == checkpoints.checkpoint_step(path)
  loaded = checkpoints.load_params(str(tmp_path), model, part)
  jax.tree_util.tree_map(np.testing.assert_array_equal, params, loaded)
  shorter = type(model)(
      model.module.clone(text=dataclasses.replace(model.module.text, max_length=8)),
      mask_ratio=0.5)
  resized = checkpoints.load_params(path, shorter)
  assert resized["text_tower"]["pos_embedding"].shape == (8, 32)
  narrower = type(model)(model.module.clone(embed_dim=16), mask_ratio=0.5)
  with pytest.raises(checkpoints.CheckpointShapeError, match="image_tower/projection/kernel"):
    checkpoints.load_params(path, narrower)
  with pytest.raises(FileNotFoundError):
    checkpoints.load_params(str(tmp_path / "nothing"), model)


def test_device_iterator_holds_at_save_steps_and_hands_out_the_exact_position(tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from flip_t5x.runtime import utils  # pylint: disable=g-import-not-at-top
  mesh = partitioning.PjitPartitioner(num_partitions=1).mesh
  sharding = jax.sharding.NamedSharding(mesh, P("data"))
  ds = tf.data.Dataset.range(40).shuffle(16, seed=0, reshuffle_each_iteration=False).batch(2)
  it = utils.DeviceIterator(ds.map(lambda x: {"x": x}), sharding, 2, prefetch=2,
                            hold_at=lambda step: step % 3 == 0, start_step=0)
  seen = [np.asarray(next(it)["x"]).tolist() for _ in range(2)]
  with pytest.raises(RuntimeError, match="ahead of the consumer"):
    it.synced_iterator()  # step 2 is not a hold step: batch 3 was already prefetched
  seen.append(np.asarray(next(it)["x"]).tolist())
  checkpoints.save_input_position(it.synced_iterator(), str(tmp_path), counter_names=())
  rest = [np.asarray(next(it)["x"]).tolist() for _ in range(3)]  # steps 4..6
  # A fresh pipeline restored from the saved position continues with batch 4.
  fresh = utils.DeviceIterator(ds.map(lambda x: {"x": x}), sharding, 2, prefetch=2, start_step=3)
  assert checkpoints.restore_input_position(fresh.synced_iterator(), str(tmp_path),
                                            counter_names=())
  assert [np.asarray(next(fresh)["x"]).tolist() for _ in range(3)] == rest
  whole = [b.tolist() for b in ds.as_numpy_iterator()]
  assert seen + rest == whole[:6]
  # Holding (at step 6) without taking the position is a clear error, not a silent end of data.
  with pytest.raises(RuntimeError, match="never taken"):
    next(it)


def test_global_norm_keeps_the_squares_of_adamw_gradients_in_its_reductions():
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((64, 48)), jnp.float32),
            "b": jnp.asarray(rng.standard_normal((48,)), jnp.float32)}
  grads = jax.tree_util.tree_map(lambda x: -0.5 * x, params)
  np.testing.assert_allclose(trainer.global_norm(grads), optax.tree.norm(grads), rtol=1e-6)

  tx = optax.adamw(1e-3, b2=0.95, weight_decay=0.2)

  def step(norm, params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, norm(grads)

  def compiled_hlo(norm):
    return jax.jit(functools.partial(step, norm)).lower(
        params, tx.init(params), grads).compile().as_text()

  # optax's norm shares AdamW's g * g, which XLA:CPU then stores as an unfused multiply.
  assert "wrapped_multiply" in compiled_hlo(optax.tree.norm)
  assert "wrapped_multiply" not in compiled_hlo(trainer.global_norm)
