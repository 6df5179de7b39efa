"""The official model switches (models_flip.py, configs/default.py) as network config fields.

Defaults are the released models' settings and must leave the computation untouched; each switch
is checked to change what it should: dropout and drop-path only while training, pooling,
temperature, projection bias and the text [CLS] token.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flip_t5x import layers
from flip_t5x import models
from flip_t5x import network
import test_train_helpers as h
from test_train_helpers import tiny_batch

TINY_IMAGE, TINY_TEXT = h.TINY_NETWORK["image"], h.TINY_NETWORK["text"]
RATES = ("image_dropout_rate", "image_attention_dropout_rate", "image_droppath_rate",
         "text_dropout_rate", "text_attention_dropout_rate", "text_droppath_rate")


def _split(switches):
  """Flat switch names (image_pooling, text_cls_token_id, ...) -> (image, text, model) fields."""
  image = {k[len("image_"):]: v for k, v in switches.items() if k.startswith("image_")}
  text = {k[len("text_"):]: v for k, v in switches.items() if k.startswith("text_")}
  rest = {k: v for k, v in switches.items() if not k.startswith(("image_", "text_"))}
  return image, text, rest


def tiny(**switches):
  image, text, rest = _split(switches)
  return network.FlipTwoTower(image=dataclasses.replace(TINY_IMAGE, **image),
                              text=dataclasses.replace(TINY_TEXT, **text),
                              embed_dim=h.TINY_NETWORK["embed_dim"], **rest)


def switch(module, name):
  """The value of a switch given by its flat name."""
  tower, _, field = name.partition("_")
  return getattr(getattr(module, tower), field)


def init_params(module):
  model = models.FlipModel(module, mask_ratio=0.0)
  return model.get_initial_variables(jax.random.PRNGKey(0),
                                     {"images": (1, 32, 32, 3), "texts": (1, 8)})["params"]


@pytest.fixture(scope="module")
def params():
  return init_params(tiny())


def train_apply(module, params, batch, rng):
  """The network as FlipModel.loss_fn runs it (mask ratio 0 here, to isolate dropout)."""
  return module.apply({"params": params}, batch["images"], batch["texts"], 0.0, None,
                      deterministic=False, rngs={"dropout": rng})


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------ defaults
def test_defaults_are_the_official_configs():
  m = tiny()
  assert all(switch(m, r) == 0.0 for r in RATES)  # configs/default.py transformer.*_rate
  assert (m.image.pooling, m.text.pooling) == ("mean", "first")  # img_avg_token, not txt_avg_token
  assert m.learn_temperature and m.fixed_temperature == 0.01  # tau_learnable, tau
  assert m.projection_bias is False and m.text.cls_token_id is None  # proj_out_bias, cls_token


@pytest.mark.slow
def test_switches_off_add_nothing_to_the_training_computation(params):
  """With the defaults, training mode traces the very program deterministic mode does."""
  m, batch, rng = tiny(), tiny_batch(), jax.random.PRNGKey(3)
  train = jax.make_jaxpr(lambda p: train_apply(m, p, batch, rng))(params)
  evaluate = jax.make_jaxpr(lambda p: m.apply({"params": p}, batch["images"], batch["texts"]))(
      params)
  assert str(train) == str(evaluate)
  model = models.FlipModel(m, mask_ratio=0.0)
  loss_train, _ = model.loss_fn(params, batch, rng)
  loss_eval, _ = model.eval_fn(params, batch)
  np.testing.assert_array_equal(loss_train, loss_eval)


# ------------------------------------------------------------------ dropout and drop-path
@pytest.mark.slow
@pytest.mark.parametrize("rate_name", RATES)
def test_each_rate_changes_training_only(params, rate_name):
  m = tiny(**{rate_name: 0.3})
  batch = tiny_batch(16)
  ref = tiny().apply({"params": params}, batch["images"], batch["texts"])
  a = train_apply(m, params, batch, jax.random.PRNGKey(1))
  b = train_apply(m, params, batch, jax.random.PRNGKey(2))
  tower = 0 if rate_name.startswith("image") else 1
  assert not np.allclose(a[tower], ref[tower])  # training draws from the 'dropout' rngs
  assert not np.allclose(a[tower], b[tower])
  np.testing.assert_array_equal(a[1 - tower], ref[1 - tower])  # the other tower is untouched
  # Deterministic (eval, predict, encoders): the very same numbers as without the switch.
  assert_trees_equal(m.apply({"params": params}, batch["images"], batch["texts"]), ref)


@pytest.mark.slow
def test_eval_and_predict_are_deterministic_with_dropout(params):
  rates = {r: 0.4 for r in RATES}
  model, plain = models.FlipModel(tiny(**rates)), models.FlipModel(tiny())
  batch = tiny_batch()
  assert_trees_equal(model.eval_fn(params, batch)[0], plain.eval_fn(params, batch)[0])
  assert_trees_equal(model.predict_batch_with_aux(params, batch, rng=jax.random.PRNGKey(1)),
                     plain.predict_batch_with_aux(params, batch))
  assert_trees_equal(model.score_batch(params, batch), plain.score_batch(params, batch))
  assert_trees_equal(model.encode_images(params, batch["images"]),
                     plain.encode_images(params, batch["images"]))
  assert_trees_equal(model.encode_texts(params, batch["texts"]),
                     plain.encode_texts(params, batch["texts"]))
  # loss_fn with a dropout_rng is the training path: dropout is on there.
  loss_a, _ = model.loss_fn(params, batch, jax.random.PRNGKey(1))
  loss_b, _ = plain.loss_fn(params, batch, jax.random.PRNGKey(1))
  assert not np.isclose(loss_a, loss_b)
  # Gradients of the dropout model are finite and reach every parameter (with rng: training).
  grads = jax.grad(lambda p: model.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(params)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def _encoder_intermediates(droppath_rate=0.0, dropout_rate=0.0, depth=3, batch=400):
  enc = layers.Encoder(depth=depth, num_heads=2, mlp_dim=16, droppath_rate=droppath_rate,
                        dropout_rate=dropout_rate, deterministic=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, 3, 8))
  variables = enc.init({"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(1)}, x)
  _, state = enc.apply(variables, x, rngs={"dropout": jax.random.PRNGKey(2)},
                       capture_intermediates=True)
  return state["intermediates"]


@pytest.mark.slow
def test_droppath_drops_whole_examples_and_grows_with_depth():
  """Block i drops each example's branch with rate * i / (depth - 1) (FLIP's Encoder)."""
  rate = 0.6
  inter = _encoder_intermediates(droppath_rate=rate)
  for i, expected in enumerate([0.0, 0.3, 0.6]):
    block = inter[f"block_{i}"]
    for branch, before in (("droppath_attention", block["Dropout_0"]),
                           ("droppath_mlp", block["mlp"]["Dropout_1"])):
      out, inp = block[branch]["__call__"][0], before["__call__"][0]
      dropped = np.all(out == 0, axis=(1, 2))
      kept = ~dropped
      np.testing.assert_allclose(out[kept], inp[kept] / (1 - expected), rtol=1e-6)
      assert not np.any(out[kept] == 0)  # kept examples keep every token
      assert abs(dropped.mean() - expected) < 0.08, (i, branch, dropped.mean())


@pytest.mark.slow
def test_dropout_drops_single_activations():
  inter = _encoder_intermediates(dropout_rate=0.25)
  for i in range(3):
    mlp = inter[f"block_{i}"]["mlp"]
    hidden = np.asarray(mlp["Dropout_0"]["__call__"][0])
    assert abs((hidden == 0).mean() - 0.25) < 0.02
    per_example = (hidden == 0).mean(axis=(1, 2))
    assert 0 < per_example.min() and per_example.max() < 1  # elementwise, not per example


def test_attention_dropout_drops_keys_for_every_query():
  """FLIP's t5x attention dropout: one keep mask per (example, head, key), shared by all queries."""
  b, length, heads, rate = 64, 6, 2, 0.3
  q, k = (np.random.default_rng(seed).standard_normal((b, length, heads, length), np.float32)
          for seed in (0, 1))
  # v[s] = one-hot(s): each output row is that query's (dropped, rescaled) probabilities.
  v = jnp.broadcast_to(jnp.eye(length)[None, :, None, :], (b, length, heads, length))
  out = layers.dropout_attention(q, k, v, rate, jax.random.PRNGKey(2))
  probs = jax.nn.softmax(jnp.einsum("btnd,bsnd->bnts", q / np.sqrt(length), k), axis=-1)
  probs = np.asarray(jnp.transpose(probs, (0, 2, 1, 3)))  # [b, t, n, s] like out
  out = np.asarray(out)
  zero = out == 0
  assert np.all(zero == zero[:, :1])  # the same keys dropped for every query
  np.testing.assert_allclose(out[~zero], probs[~zero] / (1 - rate), rtol=1e-5)
  assert abs(zero.mean() - rate) < 0.05


# ------------------------------------------------------------------ pooling
def _encoded(module, params, batch):
  """Final-LayerNorm outputs of both encoders (the towers' `encoder` modules)."""
  _, state = module.apply({"params": params}, batch["images"], batch["texts"],
                          capture_intermediates=True)
  inter = state["intermediates"]
  return (inter["image_tower"]["encoder"]["__call__"][0],
          inter["text_tower"]["encoder"]["__call__"][0])


def _project(pooled, tower_params):
  proj = tower_params["projection"]
  z = pooled @ proj["kernel"] + proj.get("bias", 0.0)
  return z / np.linalg.norm(z, axis=-1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("image_pooling,text_pooling", [("mean", "first"), ("cls", "mean")])
def test_pooling_reads_the_right_tokens(params, image_pooling, text_pooling):
  """'cls': the CLS token's final-LN output, projected; 'mean': the mean of every position."""
  m = tiny(image_pooling=image_pooling, text_pooling=text_pooling)
  batch = tiny_batch()
  z_img, z_txt, _ = m.apply({"params": params}, batch["images"], batch["texts"])
  x_img, x_txt = (np.asarray(x) for x in _encoded(m, params, batch))
  pooled_img = x_img[:, 0] if image_pooling == "cls" else x_img.mean(axis=1)
  pooled_txt = x_txt[:, 0] if text_pooling == "first" else x_txt.mean(axis=1)
  np.testing.assert_allclose(z_img, _project(pooled_img, params["image_tower"]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(z_txt, _project(pooled_txt, params["text_tower"]), rtol=1e-5,
                             atol=1e-6)
  default = tiny().apply({"params": params}, batch["images"], batch["texts"])
  assert np.allclose(z_img, default[0]) == (image_pooling == "mean")
  assert np.allclose(z_txt, default[1]) == (text_pooling == "first")


# ------------------------------------------------------------------ temperature
@pytest.mark.slow
def test_fixed_temperature_has_no_parameter_and_no_gradient(params):
  m = tiny(learn_temperature=False, fixed_temperature=0.02)
  fixed_params = init_params(m)
  assert "logit_scale" not in fixed_params
  assert set(fixed_params) == set(params) - {"logit_scale"}
  np.testing.assert_allclose(m.apply({"params": fixed_params}, method=network.FlipTwoTower.scale),
                             50.0, rtol=1e-6)
  model = models.FlipModel(m, mask_ratio=0.5)
  batch = tiny_batch()
  (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(
      fixed_params, batch, jax.random.PRNGKey(1))
  assert "logit_scale" not in grads
  np.testing.assert_allclose(metrics["temperature"].compute(), 0.02, rtol=1e-6)
  # The loss is the learnable model's with its logit_scale set to log(50).
  learn = models.FlipModel(tiny(), mask_ratio=0.5)
  loss_learn, _ = learn.loss_fn({**fixed_params, "logit_scale": jnp.log(jnp.float32(50.0))},
                                batch, jax.random.PRNGKey(1))
  np.testing.assert_allclose(loss, loss_learn, rtol=1e-5)
  learn_grads = jax.grad(lambda p: learn.loss_fn(p, batch, jax.random.PRNGKey(1))[0])(params)
  assert float(jnp.abs(learn_grads["logit_scale"])) > 0  # learnable: it trains


# ------------------------------------------------------------------ projection bias
@pytest.mark.slow
def test_projection_bias(params):
  m = tiny(projection_bias=True)
  bias_params = init_params(m)
  for tower in ("image_tower", "text_tower"):
    bias = bias_params[tower]["projection"]["bias"]
    assert bias.shape == (16,)
    np.testing.assert_array_equal(bias, 0.0)  # FLIP's mlp_bias_init: zeros
  assert "bias" not in params["image_tower"]["projection"]
  batch = tiny_batch()
  grads = jax.grad(lambda p: models.FlipModel(m).loss_fn(p, batch, jax.random.PRNGKey(1))[0])(
      bias_params)
  assert all(float(jnp.abs(grads[t]["projection"]["bias"]).max()) > 0
             for t in ("image_tower", "text_tower"))
  shifted = jax.tree_util.tree_map(lambda x: x, bias_params)
  shifted["text_tower"]["projection"]["bias"] = jnp.full((16,), 0.5)
  z = m.apply({"params": shifted}, batch["texts"], method=network.FlipTwoTower.encode_text)
  x_txt = np.asarray(_encoded(m, shifted, batch)[1])
  np.testing.assert_allclose(z, _project(x_txt[:, 0], shifted["text_tower"]), rtol=1e-5,
                             atol=1e-6)


# ------------------------------------------------------------------ text [CLS]
@pytest.mark.slow
def test_text_cls_token_is_prepended_and_the_last_token_dropped(params):
  """FLIP's aug.txt.cls_token: [CLS] + the caption cut to max_len - 1 (tests/test_data_vocab.py
  checks those ids against the official pipeline); same parameters, no new ones."""
  cls = 7
  m = tiny(text_cls_token_id=cls)
  assert jax.tree_util.tree_structure(init_params(m)) == jax.tree_util.tree_structure(params)
  texts = tiny_batch()["texts"]
  shifted = jnp.concatenate([jnp.full((4, 1), cls, texts.dtype), texts[:, :-1]], axis=1)
  encode = network.FlipTwoTower.encode_text
  np.testing.assert_array_equal(m.apply({"params": params}, texts, method=encode),
                                tiny().apply({"params": params}, shifted, method=encode))
  # The last token no longer matters; the first still does.
  np.testing.assert_array_equal(m.apply({"params": params}, texts, method=encode),
                                m.apply({"params": params}, texts.at[:, -1].set(3), method=encode))
  assert not np.allclose(m.apply({"params": params}, texts, method=encode),
                         m.apply({"params": params}, texts.at[:, 0].set(3), method=encode))


# ------------------------------------------------------------------ configuration
def test_bad_switches_are_clear_errors():
  init = lambda m: m.init(jax.random.PRNGKey(0), **tiny_batch())
  for kwargs, match in [({"image_pooling": "max"}, "image_pooling must be one of"),
                        ({"text_pooling": "last"}, "text_pooling must be one of"),
                        ({"text_droppath_rate": 1.0}, r"text_droppath_rate must be in \[0, 1\)"),
                        ({"image_dropout_rate": -0.1}, "image_dropout_rate must be in"),
                        ({"learn_temperature": False, "fixed_temperature": 0.0},
                         "fixed_temperature must be > 0"),
                        ({"text_cls_token_id": 100}, "text_cls_token_id 100 is not an id")]:
    with pytest.raises(ValueError, match=match):
      init(tiny(**kwargs))


def test_switches_bind_from_gin():
  module = h.gin_model(
      "gin_configs/models/flip_vit_b16.gin",
      bindings=["network.ImageTowerConfig.pooling = 'cls'",
                "network.TextTowerConfig.pooling = 'mean'",
                "network.ImageTowerConfig.droppath_rate = 0.1",
                "network.FlipTwoTower.learn_temperature = False",
                "network.FlipTwoTower.fixed_temperature = 0.05",
                "network.FlipTwoTower.projection_bias = True",
                "network.TextTowerConfig.cls_token_id = 101"]).module
  assert (module.image.pooling, module.text.pooling, module.image.droppath_rate) == (
      "cls", "mean", 0.1)
  assert (module.learn_temperature, module.fixed_temperature, module.projection_bias,
          module.text.cls_token_id) == (False, 0.05, True, 101)
