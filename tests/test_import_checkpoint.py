"""Import of official FLIP (t5x-format) checkpoints: on-disk format, mapping, numerics, errors.

The test writes a tiny checkpoint as upstream t5x's legacy `Checkpointer` wrote the FLIP release
(see `write_t5x_checkpoint`): a `checkpoint_<step>/checkpoint` msgpack file with
`{"version": 3, "optimizer": {"target": ..., "state": ...}}` whose arrays are normalised
TensorStore specs naming zarr directories `target.<dotted name>/` beside it. Names and layouts are
spelled out here from models_flip.py / t5x.layers (not taken from the importer), and a plain numpy
forward pass of the official model on those arrays is the reference for the imported model's
embeddings. The command line runs in a fresh process, as a user runs it.
"""
import os
import shutil

from flax import serialization
import jax
import numpy as np
import pytest
from scipy import special
import tensorstore as ts

from flip_t5x import checkpoints
from flip_t5x.checkpoints import importer as ic
from flip_t5x import layers
from flip_t5x import network
from flip_t5x.checkpoints import msgpack
from flip_t5x.checkpoints import release
import test_train_helpers as h
from test_train_helpers import TINY_GIN

# flip_tiny.gin's sizes.
TINY = dict(image_size=32, patch=8, img_width=64, img_depth=2, img_heads=4, txt_width=32,
            txt_depth=2, txt_heads=4, vocab=1000, txt_len=16, embed=32)


# ------------------------------------------------------------------------------------------------
# The official parameter tree (names from models_flip.py, layouts from FLIP's t5x/layers.py).
def official_tree(rng, image_size, patch, img_width, img_depth, img_heads, txt_width, txt_depth,
                  txt_heads, vocab, txt_len, embed):
  del img_heads, txt_heads  # t5x stores q/k/v as 2-D [W, heads*head_dim]: heads are not visible

  def normal(*shape, scale=0.1):
    return (rng.standard_normal(shape) * scale).astype(np.float32)

  def encoder(width, depth):
    t = {}
    for i in range(depth):
      t[f"encoderblock_{i:02d}"] = {
          "LayerNorm_0": {"scale": 1 + normal(width), "bias": normal(width)},
          "MultiHeadDotProductAttention_0": {
              name: {"kernel": normal(width, width, scale=0.2), "bias": normal(width)}
              for name in ("query", "key", "value", "out")},
          "LayerNorm_1": {"scale": 1 + normal(width), "bias": normal(width)},
          "MlpBlock_0": {"Dense_0": {"kernel": normal(width, 4 * width), "bias": normal(4 * width)},
                         "Dense_1": {"kernel": normal(4 * width, width), "bias": normal(width)}},
      }
    t["encoder_norm"] = {"scale": 1 + normal(width), "bias": normal(width)}
    return t

  g = image_size // patch
  pos = network.sincos_pos_embed_2d(g, g, img_width)
  return {
      "img_encoder": {
          "embedding": {"kernel": normal(patch, patch, 3, img_width), "bias": normal(img_width)},
          "posembed_encoder": {"pos_embedding": np.concatenate(
              [np.zeros((1, img_width), np.float32), pos])[None]},
          "cls": normal(1, 1, img_width),
          "Transformer": encoder(img_width, img_depth),
      },
      "txt_encoder": {
          "token_embedding": {"embedding": normal(vocab, txt_width)},
          "posembed_encoder": {"pos_embedding": normal(1, txt_len, txt_width)},
          "Transformer": encoder(txt_width, txt_depth),
      },
      "img_mlp1": {"kernel": normal(img_width, embed)},
      "txt_mlp1": {"kernel": normal(txt_width, embed)},
      "logit_scale": np.array([2.5], np.float32),
  }


def _chunks(shape):
  """t5x splits large arrays into chunks: halve the first axis where it can be halved."""
  return [shape[0] // 2 if i == 0 and shape[0] % 2 == 0 and shape[0] > 1 else d
          for i, d in enumerate(shape)]


def write_t5x_checkpoint(root, target, step=1234, dtype="float32", inline=()):
  """Writes `target` and an AdamW state the way t5x's legacy Checkpointer wrote the release.

  As upstream `Checkpointer.save` on a gs:// directory (how the release was written): every array
  with partitioning axes (all parameters, `logit_scale` included, and the optimizer moments) goes
  to its own zarr directory `<dotted name>/`, in several chunks where the array is large enough;
  the msgpack file keeps the normalised TensorStore spec (`ts.Spec(...).to_json()`: the relative
  path inside a gcs `kvstore` with a dummy bucket), and scalars without axes (step, count) inline.
  `dtype` is the save dtype (t5x's `SaveCheckpointConfig.dtype`); `inline` names target arrays
  kept in the msgpack file instead, as t5x does for arrays without partitioning axes.
  """
  ckpt_dir = os.path.join(root, f"checkpoint_{step}")
  os.makedirs(ckpt_dir)
  stores = []  # (store being opened, array): all opened, then all written, then awaited

  def externalise(tree, prefix):
    out = {}
    for k, v in tree.items():
      name = f"{prefix}/{k}"
      if isinstance(v, dict):
        out[k] = externalise(v, name)
        continue
      if name.split("/", 1)[1] in inline:
        out[k] = v.astype(np.dtype(dtype) if dtype == "float32" else v.dtype)
        continue
      rel = name.replace("/", ".")
      metadata = {"compressor": {"id": "gzip"}, "shape": list(v.shape),
                  "chunks": _chunks(list(v.shape))}
      spec = ts.Spec({"driver": "zarr", "dtype": dtype, "path": rel, "metadata": metadata,
                      "kvstore": {"driver": "gcs", "bucket": "t5x-dummy-bucket"}}).to_json()
      stores.append((ts.open({"driver": "zarr", "dtype": dtype, "metadata": metadata,
                              "kvstore": {"driver": "file", "path": os.path.join(ckpt_dir, rel)}},
                             create=True, open=True), v))
      out[k] = spec
    return out

  def zeros(tree):
    return {k: zeros(v) if isinstance(v, dict) else np.zeros_like(v) for k, v in tree.items()}

  moments = {"mu": zeros(target), "nu": zeros(target)}
  written = {"target": externalise(target, "target"),
             "state": {"step": np.array(step, np.int32),
                       "param_states": {"0": {"count": np.array(step, np.int32),
                                              **externalise(moments, "state/param_states/0")}}}}
  writes = []
  for opening, v in stores:
    store = opening.result()
    writes.append(store.write(v.astype(store.dtype.numpy_dtype)))
  for write in writes:
    write.result()
  with open(os.path.join(ckpt_dir, "checkpoint"), "wb") as f:
    f.write(serialization.msgpack_serialize({"version": 3, "optimizer": written}))
  return ckpt_dir


# ------------------------------------------------------------------------------------------------
# Plain-numpy forward pass of the official model (models_flip.py semantics).
def gelu(x, approximate=False):
  if approximate:  # flax/jax default, tanh form
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
  return 0.5 * x * (1 + special.erf(x / np.sqrt(2)))


def network_gelu_is_approximate():
  """Which GELU the project's MLP computes (FLIP's release used flax's default, the tanh form).

  The reference follows the network so that this test checks the mapping; the release's GELU
  differs from the exact one by ~1e-4 in these embeddings.
  """
  x = np.linspace(-3, 3, 8, dtype=np.float32)[None, None]
  eye = {"kernel": np.eye(8, dtype=np.float32), "bias": np.zeros(8, np.float32)}
  y = np.asarray(layers.MlpBlock(mlp_dim=8).apply({"params": {"wi": eye, "wo": eye}}, x))
  return bool(np.abs(y - gelu(x, approximate=True)).max() < 1e-6)


def layer_norm(x, p):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def dense_general(x, p, features):
  # t5x.layers.DenseGeneral: the stored 2-D kernel reshaped to in_shape + features.
  return np.tensordot(x, p["kernel"].reshape(x.shape[-1], *features), 1) + \
      p["bias"].reshape(features)


def block(x, p, heads, approximate):
  w = x.shape[-1]
  d = w // heads
  y = layer_norm(x, p["LayerNorm_0"])
  a = p["MultiHeadDotProductAttention_0"]
  q, k, v = (dense_general(y, a[n], (heads, d)) for n in ("query", "key", "value"))
  logits = np.einsum("bqhd,bkhd->bhqk", q / np.sqrt(d), k)
  logits = logits - logits.max(-1, keepdims=True)
  att = np.exp(logits)
  att /= att.sum(-1, keepdims=True)
  o = np.einsum("bhqk,bkhd->bqhd", att, v)
  out_kernel = a["out"]["kernel"].reshape(heads, d, w)
  x = x + np.einsum("bqhd,hdw->bqw", o, out_kernel) + a["out"]["bias"]
  y = layer_norm(x, p["LayerNorm_1"])
  m = p["MlpBlock_0"]
  h = gelu(y @ m["Dense_0"]["kernel"] + m["Dense_0"]["bias"], approximate)
  return x + h @ m["Dense_1"]["kernel"] + m["Dense_1"]["bias"]


def encoder(x, p, heads, approximate):
  i = 0
  while f"encoderblock_{i:02d}" in p:
    x = block(x, p[f"encoderblock_{i:02d}"], heads, approximate)
    i += 1
  return layer_norm(x, p["encoder_norm"])


def l2n(z):
  return z / (np.linalg.norm(z, axis=-1, keepdims=True) + 1e-8)


def ref_image(images, t, heads, approximate=False):
  e = t["img_encoder"]
  k = e["embedding"]["kernel"]  # conv [p, p, 3, W], stride p, VALID
  p = k.shape[0]
  n, h, w, c = images.shape
  x = images.reshape(n, h // p, p, w // p, p, c)
  x = np.einsum("nhawbc,abco->nhwo", x, k) + e["embedding"]["bias"]
  x = x.reshape(n, -1, k.shape[-1]) + e["posembed_encoder"]["pos_embedding"][:, 1:]
  x = np.concatenate([np.tile(e["cls"], (n, 1, 1)), x], 1)
  x = encoder(x, e["Transformer"], heads, approximate)
  return l2n(x.mean(1) @ t["img_mlp1"]["kernel"])


def ref_text(tokens, t, heads, approximate=False):
  e = t["txt_encoder"]
  x = e["token_embedding"]["embedding"][tokens] + e["posembed_encoder"]["pos_embedding"]
  x = encoder(x, e["Transformer"], heads, approximate)
  return l2n(x[:, 0] @ t["txt_mlp1"]["kernel"])


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model():
  return h.gin_model(TINY_GIN)


@pytest.fixture(scope="module")
def official(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("official"))
  target = official_tree(np.random.default_rng(0), **TINY)
  write_t5x_checkpoint(root, target)
  return root, target


def test_reader_reads_the_release_layout(official):
  root, target = official
  ckpt = msgpack.read_t5x_checkpoint(root)  # parent dir of checkpoint_1234/: latest step is used
  assert ckpt.step == 1234 and ckpt.version == 3
  assert ckpt.path.endswith("checkpoint_1234")
  # Every parameter is a tensorstore reference (as the release's writer stored them), read back
  # whole from several zarr chunks.
  assert not any(isinstance(leaf, np.ndarray) for leaf in ckpt.target.values())
  assert len(os.listdir(os.path.join(ckpt.path, "target.img_mlp1.kernel"))) > 2  # .zarray + chunks
  np.testing.assert_array_equal(ckpt.read("img_mlp1/kernel"), target["img_mlp1"]["kernel"])
  np.testing.assert_array_equal(ckpt.read("logit_scale"), target["logit_scale"])
  assert not any(n.startswith("state") for n in ckpt.target)  # optimizer moments are not read
  # The `checkpoint` file itself and the step directory are accepted too.
  for src in (ckpt.path, os.path.join(ckpt.path, "checkpoint")):
    assert sorted(msgpack.read_t5x_checkpoint(src).target) == sorted(ckpt.target)


def test_reader_reads_inline_arrays(tmp_path):
  target = official_tree(np.random.default_rng(5), **TINY)
  write_t5x_checkpoint(str(tmp_path), target, inline=("logit_scale", "img_mlp1/kernel"))
  ckpt = msgpack.read_t5x_checkpoint(str(tmp_path))
  assert isinstance(ckpt.target["logit_scale"], np.ndarray)
  np.testing.assert_array_equal(ckpt.read("img_mlp1/kernel"), target["img_mlp1"]["kernel"])


def test_bfloat16_checkpoint_imports(tmp_path, tiny_model):
  """A checkpoint saved with t5x's `SaveCheckpointConfig.dtype = 'bfloat16'` imports: the fixed
  position table is checked to the stored precision, and the weights are the stored values."""
  target = official_tree(np.random.default_rng(6), **TINY)
  write_t5x_checkpoint(str(tmp_path), target, dtype="bfloat16")
  params, _ = ic.import_checkpoint(str(tmp_path), tiny_model, output=None)
  kernel = params["image_tower"]["projection"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(
      kernel, target["img_mlp1"]["kernel"].astype(jax.numpy.bfloat16).astype(np.float32))
  # A position table off by more than bfloat16 rounding is still refused.
  target["img_encoder"]["posembed_encoder"]["pos_embedding"] += 0.05
  write_t5x_checkpoint(str(tmp_path / "off"), target, dtype="bfloat16")
  with pytest.raises(release.CheckpointMismatchError, match="sin-cos"):
    ic.import_checkpoint(str(tmp_path / "off"), tiny_model, output=None)


def test_every_array_lands_in_place(official, tiny_model):
  root, t = official
  params, step = ic.import_checkpoint(root, tiny_model, output=None)
  assert step == 1234
  D = 16  # head_dim of the tiny image tower (width 64, 4 heads)
  ours_img, ours_txt = params["image_tower"], params["text_tower"]
  # Patch embedding: conv kernel [p, p, 3, W] -> [p*p*3, W] in (row, column, channel) order.
  k = t["img_encoder"]["embedding"]["kernel"]
  np.testing.assert_array_equal(ours_img["patch_embed"]["embedding"]["kernel"][(3 * 8 + 5) * 3 + 2],
                                k[3, 5, 2])
  np.testing.assert_array_equal(ours_img["patch_embed"]["embedding"]["bias"],
                                t["img_encoder"]["embedding"]["bias"])
  np.testing.assert_array_equal(ours_img["cls"], t["img_encoder"]["cls"][0, 0])
  for i in range(2):
    ob = t["img_encoder"]["Transformer"][f"encoderblock_{i:02d}"]
    b = ours_img["encoder"][f"block_{i}"]
    att = ob["MultiHeadDotProductAttention_0"]
    for n in ("query", "key", "value"):
      # [W, H*D] -> [W, H, D]: column h*D + d is head h, dim d.
      np.testing.assert_array_equal(b["attention"][n]["kernel"][:, 2, 5],
                                    att[n]["kernel"][:, 2 * D + 5])
      np.testing.assert_array_equal(b["attention"][n]["bias"][3], att[n]["bias"][3 * D:4 * D])
    np.testing.assert_array_equal(b["attention"]["out"]["kernel"][1, 7],
                                  att["out"]["kernel"][D + 7])
    np.testing.assert_array_equal(b["attention"]["out"]["bias"], att["out"]["bias"])
    np.testing.assert_array_equal(b["pre_attention_layer_norm"]["scale"],
                                  ob["LayerNorm_0"]["scale"])
    np.testing.assert_array_equal(b["pre_mlp_layer_norm"]["bias"], ob["LayerNorm_1"]["bias"])
    np.testing.assert_array_equal(b["mlp"]["wi"]["kernel"], ob["MlpBlock_0"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(b["mlp"]["wo"]["bias"], ob["MlpBlock_0"]["Dense_1"]["bias"])
  np.testing.assert_array_equal(ours_img["encoder"]["encoder_norm"]["scale"],
                                t["img_encoder"]["Transformer"]["encoder_norm"]["scale"])
  np.testing.assert_array_equal(ours_img["projection"]["kernel"], t["img_mlp1"]["kernel"])
  np.testing.assert_array_equal(ours_txt["token_embedding"],
                                t["txt_encoder"]["token_embedding"]["embedding"])
  np.testing.assert_array_equal(ours_txt["pos_embedding"],
                                t["txt_encoder"]["posembed_encoder"]["pos_embedding"][0])
  txt_att = t["txt_encoder"]["Transformer"]["encoderblock_01"]["MultiHeadDotProductAttention_0"]
  np.testing.assert_array_equal(
      ours_txt["encoder"]["block_1"]["attention"]["query"]["kernel"].reshape(32, 32),
      txt_att["query"]["kernel"])
  np.testing.assert_array_equal(ours_txt["projection"]["kernel"], t["txt_mlp1"]["kernel"])
  assert np.shape(params["logit_scale"]) == () and float(params["logit_scale"]) == 2.5
  # Every parameter of the model is filled, with its own shape.
  shapes = jax.eval_shape(lambda r: tiny_model.get_initial_variables(
      r, {"images": (1, 32, 32, 3), "texts": (1, 16)}), jax.random.PRNGKey(0))["params"]
  assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
  assert all(a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(shapes),
                                                jax.tree_util.tree_leaves(params)))


@pytest.mark.slow
def test_imported_model_matches_numpy_reference(official, tiny_model, tmp_path):
  root, t = official
  out = str(tmp_path / "imported")
  params, step = ic.import_checkpoint(root, tiny_model, output=out)
  restored = checkpoints.load_params(out, tiny_model)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)
  rng = np.random.default_rng(1)
  images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
  tokens = rng.integers(1, 1000, (3, 16)).astype(np.int32)
  z_img = np.asarray(jax.jit(tiny_model.encode_images)(restored, images))
  z_txt = np.asarray(jax.jit(tiny_model.encode_texts)(restored, tokens))
  approx = network_gelu_is_approximate()
  np.testing.assert_allclose(z_img, ref_image(images.astype(np.float64), t, 4, approx), atol=2e-5)
  np.testing.assert_allclose(z_txt, ref_text(tokens, t, 4, approx), atol=2e-5)
  scale = tiny_model.module.apply({"params": restored}, method=network.FlipTwoTower.scale)
  np.testing.assert_allclose(scale, np.exp(2.5), rtol=1e-6)
  assert step == 1234


def test_wrong_gin_file_names_parameters_and_shapes(official):
  root, _ = official
  b16 = h.gin_model("gin_configs/models/flip_vit_b16.gin")
  with pytest.raises(release.CheckpointMismatchError) as e:
    ic.import_checkpoint(root, b16, output=None)
  msg = str(e.value)
  assert ("img_encoder/embedding/kernel: checkpoint shape (8, 8, 3, 64) != shape "
          "(16, 16, 3, 768)") in msg
  assert "image_tower/patch_embed/embedding/kernel" in msg
  assert ("10 blocks missing from the checkpoint: img_encoder/Transformer/encoderblock_02 to "
          "encoderblock_11") in msg
  assert "patch 8, image width 64" in msg and "image depth 2" in msg  # what the checkpoint is


def test_other_model_size_is_rejected(tmp_path, tiny_model):
  # One more image block, wider heads of text: same names, other shapes/extra arrays.
  target = official_tree(np.random.default_rng(2), **{**TINY, "img_depth": 3, "txt_width": 48})
  write_t5x_checkpoint(str(tmp_path), target, step=7)
  with pytest.raises(release.CheckpointMismatchError) as e:
    ic.import_checkpoint(str(tmp_path), tiny_model, output=None)
  msg = str(e.value)
  assert "unexpected array img_encoder/Transformer/encoderblock_02/" in msg
  assert ("txt_encoder/token_embedding/embedding: checkpoint shape (1000, 48) != shape "
          "(1000, 32)") in msg
  assert any(p.startswith(
      "txt_encoder/Transformer/encoderblock_00/MultiHeadDotProductAttention_0/query/kernel: "
      "checkpoint shape (48, 48) != shape (32, 32)") for p in e.value.problems)
  assert "... and" in msg and len(e.value.problems) > 20


def test_missing_arrays_are_named(tmp_path, tiny_model):
  target = official_tree(np.random.default_rng(3), **TINY)
  del target["txt_encoder"]["Transformer"]["encoderblock_01"]["LayerNorm_1"]
  ckpt_dir = write_t5x_checkpoint(str(tmp_path / "a"), target)
  with pytest.raises(release.CheckpointMismatchError,
                     match=r"missing array txt_encoder/Transformer/encoderblock_01/LayerNorm_1/"
                           r"(bias|scale) \(for text_tower/encoder/block_1/pre_mlp_layer_norm"):
    ic.import_checkpoint(ckpt_dir, tiny_model, output=None)
  # An array the msgpack file references but whose zarr directory is gone.
  target = official_tree(np.random.default_rng(3), **TINY)
  ckpt_dir = write_t5x_checkpoint(str(tmp_path / "b"), target)
  shutil.rmtree(os.path.join(ckpt_dir, "target.img_mlp1.kernel"))
  with pytest.raises(msgpack.CheckpointError, match=r"array 'img_mlp1/kernel' is missing"):
    ic.import_checkpoint(ckpt_dir, tiny_model, output=None)
  with pytest.raises(msgpack.CheckpointError, match="no t5x checkpoint"):
    msgpack.read_t5x_checkpoint(str(tmp_path))


def test_learned_image_position_embedding_is_rejected(tmp_path, tiny_model):
  target = official_tree(np.random.default_rng(4), **TINY)
  target["img_encoder"]["posembed_encoder"]["pos_embedding"] += 0.5
  write_t5x_checkpoint(str(tmp_path), target)
  with pytest.raises(release.CheckpointMismatchError, match="sin-cos"):
    ic.import_checkpoint(str(tmp_path), tiny_model, output=None)


def test_mapping_table_covers_the_model(tiny_model):
  table = release.mapping_table(tiny_model)
  by_ours = {e.ours: e for e in table}
  e = by_ours["image_tower/encoder/block_1/attention/out/kernel"]
  assert e.official == ("img_encoder/Transformer/encoderblock_01/MultiHeadDotProductAttention_0/"
                        "out/kernel")
  assert e.official_shape == (64, 64) and e.our_shape == (4, 16, 64)
  assert by_ours["logit_scale"].official_shape == (1,)
  assert len({e.official for e in table}) == len(table)


@pytest.mark.e2e
def test_command_line(official, tmp_path, tiny_model):
  """`python -m flip_t5x.import_checkpoint`, run in a fresh process as a user runs it."""
  root, _ = official
  out = str(tmp_path / "cli")
  proc = h.run_binary("import_checkpoint", [f"--source={root}", f"--gin_file={TINY_GIN}",
                                            f"--output={out}"], check=True)
  assert f"(step 1234) -> {out}/checkpoint_1234" in proc.stdout
  params = checkpoints.load_params(out, tiny_model)
  assert float(params["logit_scale"]) == 2.5
  proc = h.run_binary("import_checkpoint", [f"--source={root}", f"--output={out}2",
                                            "--gin_file=gin_configs/models/flip_vit_b16.gin"])
  assert proc.returncode == 2
  assert ("img_encoder/embedding/kernel: checkpoint shape (8, 8, 3, 64) != shape "
          "(16, 16, 3, 768)") in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not os.path.exists(f"{out}2")
  # --dry_run prints the mapping and writes nothing.
  proc = h.run_binary("import_checkpoint", [f"--source={root}", f"--gin_file={TINY_GIN}",
                                            "--dry_run"], check=True)
  assert "img_mlp1/kernel (64, 32) -> image_tower/projection/kernel (64, 32)" in proc.stdout
