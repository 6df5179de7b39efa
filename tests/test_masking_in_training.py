"""FLIP's masking where it decides the results: inside the trainer's jitted train step.

Network-level tests cannot see a trainer that stops passing the rng (training unmasked) or reuses
one mask every step; these tests run the real `Trainer.train_step` of the tiny model (the shipped
flip_tiny.gin: 32 px images of 16 patches, width 64) and check what it computes.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flip_t5x import network
from flip_t5x import predictor as predictor_lib
from flip_t5x import train_state as train_state_lib
from flip_t5x.runtime import partitioning
from flip_t5x.runtime import trainer as trainer_lib
import test_train_helpers as h

pytestmark = pytest.mark.slow  # compiles the trainer's train step

TINY_GIN = h.TINY_GIN
BATCH, PATCHES, WIDTH = 8, 16, 64
SHAPES = {"images": (BATCH, 32, 32, 3), "texts": (BATCH, 16)}
TRAINER_RNG = jax.random.PRNGKey(1)


def load_model(mask_ratio=None, gin_files=(TINY_GIN,), bindings=()):
  extra = [f"MASK_RATIO = {mask_ratio}"] if mask_ratio is not None else []
  return h.gin_model(*gin_files, bindings=list(bindings) + extra)


def make_trainer(model):
  """The real Trainer with plain SGD at lr 1, so new params = params - gradient."""
  part = partitioning.LocalPjitPartitioner(devices=jax.devices()[:1])
  layout = train_state_lib.StateLayout(model, optax.sgd(1.0), part, SHAPES)
  state = layout.initialize(jax.random.PRNGKey(0))
  trainer = trainer_lib.FlipTrainer(model=model, partitioner=part, layout=layout,
                                    rng=TRAINER_RNG)
  return trainer, state


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  return {"images": rng.normal(size=SHAPES["images"]).astype(np.float32),
          "texts": rng.integers(1, 1000, size=SHAPES["texts"]).astype(np.int32)}


def host(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def test_each_step_masks_with_its_own_rng(batch):
  """Step t computes the loss and gradient of `loss_fn(params, batch, fold_in(rng, t))`: masked
  (not the unmasked loss), with a mask that changes from one step to the next."""
  model = load_model(0.5)
  trainer, state = make_trainer(model)
  for step in range(2):
    params = host(state.params)
    step_rng = jax.random.fold_in(TRAINER_RNG, step)
    (want, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, step_rng)
    unmasked = float(model.loss_fn(params, batch, None)[0])
    other_step = float(model.loss_fn(params, batch, jax.random.fold_in(TRAINER_RNG, 1 - step))[0])
    state, scalars = trainer.train_step(state, batch)
    got = float(scalars["loss"])
    np.testing.assert_allclose(got, float(want), rtol=1e-5)
    assert abs(got - unmasked) > 1e-4, "the train step did not mask"
    assert abs(got - other_step) > 1e-4, f"step {step} used another step's mask"
    jax.tree_util.tree_map(
        lambda new, old, g: np.testing.assert_allclose(new, old - g, rtol=1e-4, atol=1e-6),
        host(state.params), params, host(grads))
  assert int(state.step) == 2


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5, 0.75])
def test_the_image_tower_sees_int_L_times_1_minus_r_tokens(mask_ratio):
  """The compiled step's image encoder runs on [batch, 1 + int(L(1 - r)), width] (CLS + kept)."""
  trainer, state = make_trainer(load_model(mask_ratio))
  abstract_batch = {k: jax.ShapeDtypeStruct(v, jnp.float32 if k == "images" else jnp.int32)
                    for k, v in SHAPES.items()}
  hlo = trainer.lower_train_step(state, abstract_batch).as_text()
  kept = network.num_kept_patches(PATCHES, mask_ratio)
  assert kept == int(PATCHES * (1 - mask_ratio))
  assert f"tensor<{BATCH}x{1 + kept}x{WIDTH}xf32>" in hlo
  if mask_ratio > 0:
    assert f"tensor<{BATCH}x{1 + PATCHES}x{WIDTH}xf32>" not in hlo


def test_kept_sets_differ_across_examples_and_steps_and_repeat_for_a_seed(batch):
  """The step's rng drives PatchEmbed's kept set: per example, per step, reproducibly."""
  embed = network.PatchEmbed(patch_size=8, width=WIDTH)
  variables = embed.init(jax.random.PRNGKey(0), batch["images"][:1])

  def kept(step, rng=TRAINER_RNG):
    _, ids = embed.apply(variables, batch["images"], 0.5, jax.random.fold_in(rng, step))
    return [frozenset(row.tolist()) for row in np.asarray(ids)]

  step0, step1 = kept(0), kept(1)
  assert all(len(s) == PATCHES // 2 for s in step0)
  assert len(set(step0)) == BATCH  # every example its own subset
  assert all(a != b for a, b in zip(step0, step1))  # a new subset each step
  assert kept(0) == step0  # the same seed and step give the same mask
  assert kept(0, jax.random.PRNGKey(2)) != step0


def test_evaluation_and_prediction_never_mask(batch):
  masked, unmasked = load_model(0.5), load_model(0.0)
  trainer, state = make_trainer(masked)
  params = host(state.params)
  want = float(masked.loss_fn(params, batch, None)[0])
  for _ in range(2):  # no rng anywhere: the same numbers every call
    np.testing.assert_allclose(float(trainer.eval_step(state.params, batch)["loss"]), want,
                               rtol=1e-6)
    np.testing.assert_allclose(float(masked.eval_fn(params, batch)[0]), want, rtol=1e-6)
  pred, aux = masked.predict_batch_with_aux(params, batch, rng=jax.random.PRNGKey(5))
  ref, _ = unmasked.predict_batch_with_aux(params, batch)
  np.testing.assert_allclose(pred, ref, rtol=1e-6)
  assert aux["image_embedding"].shape == (BATCH, 32)
  images = np.random.default_rng(1).integers(0, 255, (3, 40, 30, 3), dtype=np.uint8)
  np.testing.assert_allclose(
      predictor_lib.FlipPredictor(masked, params).encode_images(list(images)),
      predictor_lib.FlipPredictor(unmasked, params).encode_images(list(images)), rtol=1e-6)


def test_unmasked_tuning_never_masks():
  # The run file layered on the model file, as on the command line (the training binary's own
  # run file, runs/pretrain.gin, needs the binary as __main__; test_train_e2e runs them together).
  model = load_model(gin_files=(TINY_GIN, "gin_configs/runs/unmasked_tuning.gin"),
                     bindings=["INITIAL_CHECKPOINT_PATH = '/tmp/unused'"])
  assert model.mask_ratio == 0.0
  trainer, state = make_trainer(model)
  abstract_batch = {k: jax.ShapeDtypeStruct(v, jnp.float32 if k == "images" else jnp.int32)
                    for k, v in SHAPES.items()}
  hlo = trainer.lower_train_step(state, abstract_batch).as_text()
  assert f"tensor<{BATCH}x{1 + PATCHES}x{WIDTH}xf32>" in hlo
