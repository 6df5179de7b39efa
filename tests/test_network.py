"""FLIP network: masking, towers, logit_scale, precision and remat variants."""
import collections
import dataclasses
import re

import flax
from flax import traverse_util
from flax.linen import partitioning as nn_partitioning
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flip_t5x import backends
from flip_t5x import layers
from flip_t5x import models
from flip_t5x import network
from flip_t5x import xla_options
from test_train_helpers import TINY_NETWORK as TINY
from test_train_helpers import tiny_batch


def tiny_module(**overrides):
  return network.FlipTwoTower(**{**TINY, **overrides})


@pytest.fixture(scope="module")
def tiny_params():
  model = models.FlipModel(tiny_module(), mask_ratio=0.5)
  init = jax.jit(lambda rng: model.get_initial_variables(
      rng, {"images": (4, 32, 32, 3), "texts": (4, 8)})["params"])
  return init(jax.random.PRNGKey(0))


# ------------------------------------------------------------------ masking
@pytest.mark.parametrize("mask_ratio,expected", [(0.5, 98), (0.75, 49), (0.0, 196)])
def test_num_kept_patches_matches_flip(mask_ratio, expected):
  assert network.num_kept_patches(196, mask_ratio) == expected


def test_num_kept_patches_rejects_bad_ratio():
  with pytest.raises(ValueError, match="mask_ratio"):
    network.num_kept_patches(196, 1.0)


@pytest.mark.parametrize("method", network.MASKING_METHODS)
def test_random_masking_keeps_distinct_random_subsets(method):
  b, length, d = 8, 196, 4
  # Token i carries the value i, so kept tokens reveal which patches survived.
  x = jnp.broadcast_to(jnp.arange(length, dtype=jnp.float32)[None, :, None], (b, length, d))
  kept, ids = network.random_masking(x, jax.random.PRNGKey(0), 0.75, method)
  assert kept.shape == (b, 49, d) and ids.shape == (b, 49)
  np.testing.assert_allclose(kept[..., 0], ids.astype(np.float32))
  ids = np.asarray(ids)
  for row in ids:
    assert len(set(row.tolist())) == 49  # no patch kept twice
    assert row.min() >= 0 and row.max() < length
  assert len({tuple(sorted(r)) for r in ids.tolist()}) == b  # differs per example
  _, ids2 = network.random_masking(x, jax.random.PRNGKey(1), 0.75, method)
  assert not np.array_equal(np.sort(ids, 1), np.sort(np.asarray(ids2), 1))  # differs per rng
  _, ids_again = network.random_masking(x, jax.random.PRNGKey(0), 0.75, method)
  np.testing.assert_array_equal(ids, ids_again)  # deterministic for an rng


def test_masking_methods_agree():
  x = np.random.default_rng(3).standard_normal((2, 16, 8), dtype=np.float32)
  a, ia = network.random_masking(x, jax.random.PRNGKey(4), 0.5, "gather")
  b, ib = network.random_masking(x, jax.random.PRNGKey(4), 0.5, "onehot")
  np.testing.assert_array_equal(ia, ib)
  np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_position_embedding_is_added_before_masking():
  """A kept token is embed(its patch) + the position embedding of where the patch came from."""
  pe = network.PatchEmbed(patch_size=8, width=16)
  images = np.random.default_rng(0).standard_normal((2, 32, 32, 3), dtype=np.float32)
  variables = pe.init(jax.random.PRNGKey(1), images)
  full, none_ids = pe.apply(variables, images)
  assert none_ids is None and full.shape == (2, 16, 16)
  masked, ids = pe.apply(variables, images, 0.5, jax.random.PRNGKey(2))
  assert masked.shape == (2, 8, 16)
  np.testing.assert_allclose(masked, jnp.take_along_axis(full, ids[:, :, None], axis=1),
                             rtol=1e-5, atol=1e-5)
  pos = network.sincos_pos_embed_2d(4, 4, 16)
  no_pos = full - pos[None]
  assert not np.allclose(no_pos, full)  # the position embedding is really there


def test_sincos_position_embedding_shape_and_range():
  pos = network.sincos_pos_embed_2d(14, 14, 768)
  assert pos.shape == (196, 768)
  assert np.abs(pos).max() <= 1.0
  assert len({tuple(np.round(r, 5)) for r in pos}) == 196  # every position distinct


@pytest.mark.slow
def test_masking_needs_rng_and_is_off_at_eval(tiny_params):
  m = tiny_module()
  images = tiny_batch()["images"]
  with pytest.raises(ValueError, match="rng"):
    m.apply({"params": tiny_params}, images, 0.5, None, method=network.FlipTwoTower.encode_image)
  model = models.FlipModel(m, mask_ratio=0.5)
  batch = tiny_batch()
  # eval_fn (no rng) uses every patch: deterministic, equal to mask_ratio 0 with any rng.
  loss_eval, _ = jax.jit(model.eval_fn)(tiny_params, batch)
  loss_unmasked, _ = jax.jit(models.FlipModel(m, mask_ratio=0.0).loss_fn)(
      tiny_params, batch, jax.random.PRNGKey(9))
  np.testing.assert_allclose(loss_eval, loss_unmasked, rtol=1e-6)
  loss_masked, _ = jax.jit(model.loss_fn)(tiny_params, batch, jax.random.PRNGKey(9))
  assert not np.isclose(loss_masked, loss_eval)


# ------------------------------------------------------------------ towers
@pytest.mark.slow
def test_towers_run_alone_and_are_normalised(tiny_params):
  model = models.FlipModel(tiny_module())
  batch = tiny_batch()
  z_img = model.encode_images(tiny_params, batch["images"])
  z_txt = model.encode_texts(tiny_params, batch["texts"])
  assert z_img.shape == (4, 16) and z_txt.shape == (4, 16)
  np.testing.assert_allclose(jnp.linalg.norm(z_img, axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(z_txt, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_text_tower_pools_position_zero(tiny_params):
  """No mask: later tokens still influence position 0 through attention, but pooling is pos 0."""
  model = models.FlipModel(tiny_module())
  texts = tiny_batch()["texts"]
  z1 = model.encode_texts(tiny_params, texts)
  z2 = model.encode_texts(tiny_params, texts.at[:, -1].set(7))
  assert not np.allclose(z1, z2)  # bidirectional: no causal mask


@pytest.mark.slow
def test_logit_scale_init_and_clip(tiny_params):
  m = tiny_module()
  np.testing.assert_allclose(tiny_params["logit_scale"], np.log(1 / 0.07), rtol=1e-6)
  for raw, expected in [(10.0, 100.0), (-3.0, 1.0), (2.0, np.exp(2.0))]:
    params = {**tiny_params, "logit_scale": jnp.asarray(raw)}
    scale = m.apply({"params": params}, method=network.FlipTwoTower.scale)
    np.testing.assert_allclose(scale, expected, rtol=1e-6)


def test_params_axes_cover_every_parameter():
  model = models.FlipModel(tiny_module())
  variables = jax.eval_shape(lambda: model.get_initial_variables(
      jax.random.PRNGKey(0), {"images": (2, 32, 32, 3), "texts": (2, 8)}))
  axes = traverse_util.flatten_dict(
      flax.core.unfreeze(nn_partitioning.get_axis_names(variables["params_axes"])))
  params = traverse_util.flatten_dict(flax.core.unfreeze(variables["params"]))
  assert set(axes) == set(params)
  for path, p in params.items():
    assert len(axes[path]) == p.ndim, path
  assert tuple(axes[("image_tower", "encoder", "block_0", "attention", "query", "kernel")]) == (
      "embed", "heads", "kv")
  assert tuple(axes[("text_tower", "token_embedding")]) == ("vocab", "embed")


@pytest.mark.slow
def test_initialisers_follow_flip():
  model = models.FlipModel(tiny_module(image=dataclasses.replace(TINY["image"], width=256,
                                                                  num_heads=4)))
  params = jax.jit(lambda rng: model.get_initial_variables(
      rng, {"images": (1, 32, 32, 3), "texts": (1, 8)})["params"])(jax.random.PRNGKey(0))
  img = params["image_tower"]
  assert abs(float(jnp.std(img["cls"])) - 0.02) < 0.005
  assert abs(float(jnp.std(params["text_tower"]["token_embedding"])) - 0.02) < 0.002
  q = img["encoder"]["block_0"]["attention"]["query"]["kernel"].reshape(256, 256)
  # xavier-uniform with scale 0.5 on fan-avg: variance 0.5 / 256 -> bound sqrt(3 * 0.5 / 256)
  assert float(jnp.abs(q).max()) <= np.sqrt(1.5 / 256) + 1e-6
  assert float(jnp.abs(q).max()) > 0.9 * np.sqrt(1.5 / 256)
  np.testing.assert_array_equal(img["encoder"]["block_0"]["mlp"]["wi"]["bias"], 0.0)


# ------------------------------------------------------------------ training behaviour
@pytest.mark.slow
def test_gradients_reach_both_towers_and_logit_scale(tiny_params):
  model = models.FlipModel(tiny_module(), mask_ratio=0.5)
  batch = tiny_batch()
  grads = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0]))(
      tiny_params)
  for tower in ("image_tower", "text_tower"):
    norms = [float(jnp.linalg.norm(g)) for g in jax.tree_util.tree_leaves(grads[tower])]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) == len(norms), tower
  assert float(jnp.abs(grads["logit_scale"])) > 0


@pytest.mark.slow
def test_tiny_model_loss_decreases_on_a_fixed_batch(tiny_params):
  model = models.FlipModel(tiny_module(), mask_ratio=0.5)
  batch = tiny_batch(8)
  tx = optax.adamw(1e-3)
  opt_state = tx.init(tiny_params)

  @jax.jit
  def step(params, opt_state, rng):
    (loss, _), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, rng)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params, first = tiny_params, None
  for i in range(30):
    params, opt_state, loss = step(params, opt_state, jax.random.PRNGKey(i))
    first = loss if first is None else first
  final, _ = jax.jit(model.eval_fn)(params, batch)
  assert float(final) < 0.5 * float(first), (first, final)


@pytest.mark.parametrize("overrides,tol", [
    ({"dtype": "bfloat16"}, 5e-2),
    ({"remat_policy": "minimal"}, 1e-5),
    ({"remat_policy": "full"}, 1e-5),
    ({"masking_method": "onehot"}, 1e-5),
    ({"cpu_backward": False}, 1e-5),
    ({"cpu_backward": True}, 1e-5),
    ({"cpu_backward": False, "attention_implementation": "xla"}, 1e-5),
])
@pytest.mark.slow
def test_variants_match_float32_no_remat(tiny_params, overrides, tol):
  batch, rng = tiny_batch(), jax.random.PRNGKey(5)
  ref = models.FlipModel(tiny_module(), mask_ratio=0.5)
  var = models.FlipModel(tiny_module(**overrides), mask_ratio=0.5)
  f_ref = jax.jit(jax.value_and_grad(lambda p: ref.loss_fn(p, batch, rng)[0]))
  f_var = jax.jit(jax.value_and_grad(lambda p: var.loss_fn(p, batch, rng)[0]))
  (l_ref, g_ref), (l_var, g_var) = f_ref(tiny_params), f_var(tiny_params)
  assert np.isfinite(float(l_var))
  np.testing.assert_allclose(l_var, l_ref, rtol=tol, atol=tol)
  if "dtype" not in overrides:
    for a, b in zip(jax.tree_util.tree_leaves(g_ref), jax.tree_util.tree_leaves(g_var)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)

# ------------------------------------------------------------------ activation checkpointing
def _residuals(remat_policy, cpu_backward):
  """What the backward pass keeps from the forward (the leaves of jax.vjp's closure), abstractly."""
  model = models.FlipModel(tiny_module(remat_policy=remat_policy, cpu_backward=cpu_backward),
                           mask_ratio=0.5)
  batch = tiny_batch(16)
  params = jax.eval_shape(lambda: model.module.init(
      jax.random.PRNGKey(0), batch["images"][:1], batch["texts"][:1])["params"])
  loss = lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0]
  return jax.tree_util.tree_leaves(jax.eval_shape(lambda p: jax.vjp(loss, p)[1], params))


def _is_attention_matrix(shape):
  """[..., length, length] (or [..., length, 1, length], jax's grouped-query layout)."""
  shape = tuple(d for d in shape if d != 1)
  return len(shape) >= 4 and shape[-1] == shape[-2]


@pytest.mark.slow
@pytest.mark.parametrize("cpu_backward", [True, False])
def test_remat_policies_keep_less_and_minimal_keeps_no_attention_matrix(cpu_backward):
  kept = {}
  for policy in layers.REMAT_POLICIES:
    leaves = _residuals(policy, cpu_backward)
    kept[policy] = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)
    attention = [x.shape for x in leaves if _is_attention_matrix(x.shape)]
    assert bool(attention) == (policy == "none"), (policy, attention)
  assert kept["none"] > kept["minimal"] > kept["full"], kept


@pytest.mark.slow
def test_remat_recomputation_is_guarded_against_cse(tiny_params):
  """XLA would merge an unguarded recomputation back into the forward pass (remat then saves
  nothing); jax guards it with optimization barriers, one per rematerialised block."""
  batch, rng = tiny_batch(), jax.random.PRNGKey(0)
  for policy, blocks in (("none", 0), ("minimal", 4), ("full", 4)):
    model = models.FlipModel(tiny_module(remat_policy=policy), mask_ratio=0.5)
    grad = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, rng)[0]))
    hlo = grad.lower(tiny_params).as_text()
    assert hlo.count("stablehlo.optimization_barrier") == blocks, policy


# ------------------------------------------------------------------ backward-pass layout
@pytest.mark.parametrize("x_shape,k_shape,in_axes", [
    ((2, 5, 6), (6, 24), 1),      # in < out
    ((2, 5, 24), (24, 6), 1),     # in > out
    ((2, 5, 6), (6, 3, 4), 1),    # features over two axes (query/key/value)
    ((2, 5, 3, 4), (3, 4, 6), 2),  # two contracted axes (attention output)
])
@pytest.mark.parametrize("cpu_backward", [True, False])  # dense_dot / lax.dot_general
def test_dense_vjp_matches_autodiff(x_shape, k_shape, in_axes, cpu_backward):
  kx, kk, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x, kernel = jax.random.normal(kx, x_shape), jax.random.normal(kk, k_shape)
  dense = backends.Backend(cpu_backward=cpu_backward).dense
  y, vjp = jax.vjp(lambda a, b: dense(a, b, in_axes), x, kernel)
  y_ref, vjp_ref = jax.vjp(lambda a, b: jnp.tensordot(a, b, in_axes), x, kernel)
  np.testing.assert_allclose(y, y_ref, rtol=1e-6)
  g = jax.random.normal(kg, y.shape)
  for got, want in zip(vjp(g), vjp_ref(g)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cpu_backward", [True, False])
def test_dot_remat_policies_see_the_dense_matmul_only_in_the_plain_formulation(cpu_backward):
  """jax's `checkpoint_dots` saves a plain dense layer's output; `dense_dot`'s custom VJP hides
  the matmul from it (why the custom formulations stay off the CPU)."""
  dense = backends.Backend(cpu_backward=cpu_backward).dense
  x, kernel = jnp.ones((4, 8, 16)), jnp.ones((16, 32))
  f = jax.checkpoint(lambda a, b: jnp.sin(dense(a, b, 1)),
                     policy=jax.checkpoint_policies.checkpoint_dots)
  kept = [l.shape for l in jax.tree_util.tree_leaves(jax.vjp(f, x, kernel)[1])]
  assert ((4, 8, 32) in kept) == (not cpu_backward), kept


def test_dense_dot_kernel_gradient_reads_its_operands_in_place():
  """The kernel gradient contracts the tokens axis of 2-D operands: no transposed copy of x."""
  def loss(kernel, x):
    x = (x - x.mean(-1, keepdims=True)) * 2.0  # an elementwise producer, as LayerNorm is
    return jnp.sum(jnp.tanh(backends.dense_dot(x, kernel, 1)))

  x, kernel = jnp.ones((4, 50, 64)), jnp.ones((64, 256))
  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(kernel, x).compile(
      compiler_options=xla_options.compiler_options(None, xla_options.XlaOptions())).as_text()
  kernel_grads = [l for l in hlo.splitlines() if re.search(r"= f32\[64,256\]\S* dot\(", l)]
  assert len(kernel_grads) == 1
  assert "lhs_contracting_dims={0}, rhs_contracting_dims={0}" in kernel_grads[0]
  assert not re.search(r"= f32\[64,200\]", hlo)  # x as [in, tokens]
  assert not re.search(r"= \S+ transpose\(", hlo)


CPU_GELU, GPU_GELU, PLAIN = {"cpu_backward": True}, {"gelu_from_input": True}, {}


@pytest.mark.parametrize("dtype,backend,tol", [
    (jnp.float32, CPU_GELU, 1e-5), (jnp.float32, GPU_GELU, 1e-5),  # gelu_tanh
    (jnp.float32, PLAIN, 1e-5),  # jax.nn.gelu
    (jnp.bfloat16, CPU_GELU, 2e-2), (jnp.bfloat16, GPU_GELU, 2e-2),  # VJP in float32
    (jnp.bfloat16, PLAIN, 5e-2),  # autodiff in bfloat16: 1 + tanh cancels near x = -3
])
def test_gelu_matches_jax_gelu(dtype, backend, tol):
  x = jnp.linspace(-8.0, 8.0, 4001).astype(dtype)
  g = jnp.asarray(np.random.default_rng(0).standard_normal(x.shape, dtype=np.float32), dtype)
  y, vjp = jax.vjp(backends.Backend(**backend).gelu, x)
  assert y.dtype == vjp(g)[0].dtype == dtype
  np.testing.assert_array_equal(np.float32(y), np.float32(jax.nn.gelu(x, approximate=True)))
  # The reference gradient: autodiff of the formula in float32 on the same inputs.
  _, vjp_ref = jax.vjp(lambda t: jax.nn.gelu(t, approximate=True), x.astype(jnp.float32))
  np.testing.assert_allclose(np.float32(vjp(g)[0]), vjp_ref(g.astype(jnp.float32))[0],
                             rtol=tol, atol=tol)


def test_gelu_tanh_keeps_only_its_input_for_the_backward_pass():
  """One residual (x), where autodiff of the formula also keeps the tanh."""
  x = jnp.ones((4, 8))
  ours = jax.vjp(backends.gelu_tanh, x)[1]
  ref = jax.vjp(lambda t: jax.nn.gelu(t, approximate=True), x)[1]
  big = lambda fn: [l for l in jax.tree_util.tree_leaves(fn) if getattr(l, "shape", ()) == x.shape]
  assert len(big(ours)) == 1 and len(big(ref)) >= 2


def _layer_norm_formula(x, scale, bias, epsilon=1e-6):
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  return (x32 - mean) * jax.lax.rsqrt(var + epsilon) * scale + bias


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 2e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("cpu_backward", [True, False])  # closed-form VJP / autodiff
def test_layer_norm_matches_autodiff_of_its_formula(dtype, tol, cpu_backward):
  rng = np.random.default_rng(4)
  x = jnp.asarray(3.0 + 2.0 * rng.standard_normal((2, 5, 16)), dtype)  # a mean far from 0
  scale = jnp.asarray(1.0 + 0.5 * rng.standard_normal(16), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(16), jnp.float32)
  g = jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32)
  layer_norm = backends.Backend(cpu_backward=cpu_backward).layer_norm
  y, vjp = jax.vjp(lambda *a: layer_norm(*a, 1e-6), x, scale, bias)
  # The reference: autodiff of the formula in float32 on the same (rounded) inputs.
  ref, vjp_ref = jax.vjp(_layer_norm_formula, x.astype(jnp.float32), scale, bias)
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  grads = vjp(g)
  assert [t.dtype for t in grads] == [dtype, jnp.float32, jnp.float32]
  for got, want in zip(grads, vjp_ref(g)):
    np.testing.assert_allclose(np.float32(got), want, rtol=tol, atol=tol)


def test_layer_norm_keeps_its_input_and_two_statistics_per_token():
  """x, mean and 1/std ([tokens, 1]) and scale; autodiff of the formula also keeps x - mean."""
  x, scale, bias = jnp.ones((4, 8, 16)), jnp.ones((16,)), jnp.zeros((16,))
  ours = jax.vjp(lambda *a: backends.layer_norm(*a, 1e-6), x, scale, bias)[1]
  ref = jax.vjp(_layer_norm_formula, x, scale, bias)[1]
  big = lambda fn: [l for l in jax.tree_util.tree_leaves(fn) if getattr(l, "shape", ()) == x.shape]
  assert len(big(ours)) == 1 and len(big(ref)) >= 2


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_attention_core_matches_jax_dot_product_attention(dtype, tol):
  shape = (2, 7, 3, 8)  # batch, length, heads, head_dim
  rng = np.random.default_rng(3)
  q, k, v, g = (jnp.asarray(rng.standard_normal(shape), dtype) for _ in range(4))
  out, vjp = jax.vjp(backends.attention_core, q, k, v)
  ref, vjp_ref = jax.vjp(jax.nn.dot_product_attention, q, k, v)
  assert out.dtype == ref.dtype == dtype
  np.testing.assert_allclose(np.float32(out), np.float32(ref), rtol=tol, atol=tol)
  for got, want in zip(vjp(g), vjp_ref(g)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), rtol=tol, atol=tol)


def test_materialize_grad_is_the_identity_in_both_directions():
  x = jnp.array([[1.0, -2.0], [3.0, 4.0]])
  np.testing.assert_array_equal(backends.materialize_grad(x), x)
  for g in (jnp.array([[0.5, 1.0], [-1.0, 2.0]]), jnp.array([[jnp.nan, 1.0], [jnp.inf, 2.0]])):
    _, vjp = jax.vjp(backends.materialize_grad, x)
    np.testing.assert_array_equal(vjp(g)[0], g)  # NaN/inf cotangents pass through unchanged


@pytest.mark.slow
@pytest.mark.parametrize("cpu_backward", [True, False])
def test_cpu_backward_puts_conditionals_in_the_compiled_backward(cpu_backward):
  # The point of the option is the compiled program: one conditional per block boundary in the
  # backward pass on XLA:CPU (a fusion boundary), none without it.
  module = tiny_module(cpu_backward=cpu_backward)
  model = models.FlipModel(module, mask_ratio=0.5)
  batch, rng = tiny_batch(), jax.random.PRNGKey(1)
  params = model.get_initial_variables(rng, {"images": (4, 32, 32, 3), "texts": (4, 8)})["params"]
  grad = jax.jit(jax.grad(lambda p: model.loss_fn(p, batch, rng)[0]))
  hlo = grad.lower(params).compile().as_text()
  expected = (TINY["image"].depth + 1) + (TINY["text"].depth + 1) if cpu_backward else 0
  assert hlo.count(" conditional(") == expected


@pytest.mark.parametrize("overrides", [{"cpu_backward": True}, {"cpu_backward": False},
                                       {"platform": "gpu"}, {"platform": "tpu"}])
def test_every_layer_runs_the_chosen_backends_formulations(overrides):
  """cpu_backward reaches every dense layer (patch embedding and projections too), LayerNorm,
  GELU, attention and residual stream of both towers; on a GPU only gelu_tanh runs; elsewhere
  (and with cpu_backward forced off on the CPU) no custom VJP is left."""
  model = models.FlipModel(tiny_module(**overrides), mask_ratio=0.5)
  batch, rng = tiny_batch(), jax.random.PRNGKey(1)
  params = jax.eval_shape(lambda: model.get_initial_variables(
      rng, {"images": (4, 32, 32, 3), "texts": (4, 8)})["params"])
  jaxpr = str(jax.make_jaxpr(lambda p: model.loss_fn(p, batch, rng)[0])(params))
  called = collections.Counter(re.findall(r"custom_vjp_call\[\s*name=(\w+)", jaxpr))
  blocks = TINY["image"].depth + TINY["text"].depth
  if overrides.get("cpu_backward"):
    expected = collections.Counter(
        # 6 per block (q, k, v, out, wi, wo), 2 projections, the patch embedding
        dense_dot=6 * blocks + 2 + 1, layer_norm=2 * blocks + 2, gelu_tanh=blocks,
        attention_core=blocks, materialize_grad=blocks + 2)
  else:
    expected = collections.Counter(gelu_tanh=blocks if overrides.get("platform") == "gpu" else 0)
  assert called == +expected


@pytest.mark.parametrize("platform,cpu_backward,gelu_from_input", [
    ("cpu", True, False), ("gpu", False, True), ("tpu", False, False)])
def test_choose_picks_what_was_measured_to_pay_on_each_platform(platform, cpu_backward,
                                                                gelu_from_input):
  backend = backends.choose(platform=platform)
  assert (backend.cpu_backward, backend.gelu_from_input) == (cpu_backward, gelu_from_input)
  assert backends.choose(False, platform=platform).cpu_backward is False  # forced either way
  assert backends.choose(True, platform=platform).cpu_backward is True


@pytest.mark.slow
def test_cpu_backward_defaults_to_the_backend():
  assert tiny_module().cpu_backward is None
  params = tiny_module().init(jax.random.PRNGKey(0), **tiny_batch())
  bound = tiny_module().bind(params)
  expected = jax.default_backend() == "cpu"
  assert bound.image_tower.backend.cpu_backward is expected
  assert bound.text_tower.backend.cpu_backward is expected


def test_bad_options_are_clear_errors():
  with pytest.raises(ValueError, match="remat_policy"):
    tiny_module(remat_policy="some").init(jax.random.PRNGKey(0), **tiny_batch())
  with pytest.raises(ValueError, match="not a positive multiple of the patch size 5"):
    network.ImageTowerConfig(image_size=32, patch_size=5)
  with pytest.raises(ValueError, match="attention_implementation must be one of"):
    tiny_module(attention_implementation="flash").init(jax.random.PRNGKey(0), **tiny_batch())


@pytest.mark.slow
@pytest.mark.parametrize("side", [24, 64])
def test_images_of_another_size_are_refused(tiny_params, side):
  # Sin-cos positions exist for any grid: without the check a 64-px image would run on the
  # 32-px model as 64 patches instead of 16, with no error.
  images = jnp.zeros((1, side, side, 3))
  with pytest.raises(ValueError, match=r"this image tower takes 32x32 .*TASK_FEATURE_LENGTHS"):
    tiny_module().apply({"params": tiny_params}, images, method=network.FlipTwoTower.encode_image)


@pytest.mark.slow
def test_text_embedding_does_not_depend_on_the_padding(tiny_params):
  # The text tower has no padding mask: ids padded to 5, 8 (max_length) or 13 by a pipeline give
  # one embedding, because the tower pads or cuts them to max_length itself; ids longer than
  # max_length are cut, as the official pipeline's pad_model_inputs.
  module = tiny_module()
  assert module.text.max_length == 8
  ids = jnp.array([[5, 9, 3, 0, 0], [7, 0, 0, 0, 0]], jnp.int32)
  encode = lambda t: np.asarray(module.apply({"params": tiny_params}, t,
                                             method=network.FlipTwoTower.encode_text))
  padded = [jnp.pad(ids, ((0, 0), (0, n - 5))) for n in (8, 13)]
  for other in padded:
    np.testing.assert_allclose(encode(other), encode(ids), atol=1e-6, rtol=0)
  long_ids = jnp.arange(1, 13, dtype=jnp.int32)[None]
  np.testing.assert_allclose(encode(long_ids), encode(long_ids[:, :8]), atol=1e-6, rtol=0)
  assert np.abs(encode(long_ids) - encode(long_ids[:, :7])).max() > 1e-3  # the 8th id counts


@pytest.mark.slow
@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="checks the error without an accelerator; on a GPU cuDNN runs")
def test_cudnn_attention_on_the_cpu_is_a_clear_error():
  # With cpu_backward left to the backend the network refuses before tracing; forced off, the
  # request reaches jax, which says cuDNN is missing, rather than silently running XLA's attention.
  with pytest.raises(ValueError, match="NVIDIA GPUs only"):
    tiny_module(attention_implementation="cudnn").init(jax.random.PRNGKey(0), **tiny_batch())
  with pytest.raises(RuntimeError, match="cuDNN"):
    tiny_module(attention_implementation="cudnn", cpu_backward=False, dtype="bfloat16").init(
        jax.random.PRNGKey(0), **tiny_batch())


@pytest.mark.slow
@pytest.mark.parametrize("length", [7, 8])
def test_even_length_attention_matches_unpadded(length):
  # The cuDNN path's padding, run through XLA's implementation: same values and gradients.
  q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (2, length, 4, 16)) for i in range(3))
  def loss(fn):
    return lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
  plain = loss(lambda q, k, v: jax.nn.dot_product_attention(q, k, v))
  padded = loss(lambda q, k, v: backends.even_length_attention(q, k, v, "xla"))
  np.testing.assert_allclose(padded(q, k, v), plain(q, k, v), rtol=1e-5)
  for a, b in zip(jax.grad(padded, (0, 1, 2))(q, k, v), jax.grad(plain, (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
