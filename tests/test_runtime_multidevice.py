"""8 simulated CPU devices as 8x1, 4x2 and 2x4 meshes give the loss, gradients, update and eval
outputs of 1 device, compared whole (every shard of every array).

Runs in a subprocess because the device count is fixed when jax starts.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import test_train_helpers as h

pytestmark = pytest.mark.e2e

SCRIPT = r'''
import sys, gin, jax, numpy as np
from flip_t5x import train_state
from flip_t5x.evaluation import encoder as encoder_lib
from flip_t5x.evaluation import zeroshot as zeroshot_eval
from flip_t5x.data import vocabulary as vocabulary_lib
from flip_t5x.runtime import optimizers, partitioning, trainer
assert jax.device_count() == 8
out_path, vocab_file = sys.argv[1], sys.argv[2]
gin.parse_config_file("gin_configs/models/flip_tiny.gin")
model = gin.query_parameter("%MODEL").scoped_configurable_fn()
gin.clear_config()
rng = np.random.default_rng(0)
batch = {"images": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
         "texts": rng.integers(0, 1000, size=(16, 16)).astype(np.int32)}
shapes = {"images": (16, 32, 32, 3), "texts": (16, 16)}
spec = {"images": jax.sharding.PartitionSpec("data"), "texts": jax.sharding.PartitionSpec("data")}
vocab = vocabulary_lib.WordPieceVocabulary(vocab_file)
tx = optimizers.unwrap(optimizers.adamw(
    optimizers.warmup_cosine_schedule(0.05, 16, total_steps=10, warmup_steps=1)))
out = {}
for name, parts, pstates in (("1x1", None, False), ("8x1", 1, False), ("4x2", 2, True),
                             ("2x4", 4, True)):
  if parts is None:  # reference: one of the eight devices (the partitioner's `devices`)
    part = partitioning.LocalPjitPartitioner(devices=jax.devices()[:1])
  else:
    part = partitioning.PjitPartitioner(num_partitions=parts, partition_states=pstates)
  layout = train_state.StateLayout(model, tx, part, shapes)
  state = layout.initialize(jax.random.PRNGKey(0))
  t = trainer.FlipTrainer(model=model, partitioner=part, layout=layout,
                          rng=jax.random.PRNGKey(1))
  gb = {k: jax.device_put(v, part.data_sharding) for k, v in batch.items()}
  grad_fn = part.partition(
      lambda p, b: jax.value_and_grad(lambda q: model.loss_fn(q, b, jax.random.PRNGKey(3))[0])(p),
      in_axis_resources=(layout.specs.params, spec), out_axis_resources=None)
  loss, grads = grad_fn(state.params, gb)
  eval_loss = t.eval_step(state.params, gb)["loss"]
  # The eval binary's paths: prompts (text tower) and images (image tower) sharded over `data`.
  class_emb = zeroshot_eval.model_class_embeddings(model, state.params, ["cat", "dog", "car"],
                                                   ["a {}", "the {}"], vocab, 16, batch_size=8,
                                                   mesh=part.mesh)
  image_emb = encoder_lib.encoder_for(model).image_fn(state.params, gb["images"])
  new_state, scalars = t.train_step(state, gb)
  out[f"{name}/mesh"] = np.array([part.mesh.shape["data"], part.mesh.shape["model"]])
  out[f"{name}/mu_shard"] = np.array(new_state.opt_state[0].mu["text_tower"]["token_embedding"]
                                     .sharding.shard_shape((1000, 32)))
  for key, value in [("loss", loss), ("step_loss", scalars["loss"]), ("eval_loss", eval_loss),
                     ("class_emb", class_emb), ("image_emb", image_emb)]:
    out[f"{name}/{key}"] = np.asarray(value)
  for prefix, tree in (("grads", grads), ("params", new_state.params)):
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      out[f"{name}/{prefix}/" + "/".join(str(getattr(k, "key", k)) for k in path)] = np.asarray(leaf)
np.savez(out_path, **out)
'''


def test_meshes_match_one_device(tmp_path):
  """Loss, gradients, update and eval outputs: whole arrays (every shard) against one device."""
  vocab_file = tmp_path / "vocab.txt"
  vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "the", "cat", "dog",
                                   "car"]) + "\n")
  out = tmp_path / "result.npz"
  proc = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(vocab_file)], cwd=h.ROOT,
                        env=h.env(8), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  res = dict(np.load(out))
  ref = {k[len("1x1/"):]: v for k, v in res.items() if k.startswith("1x1/")}
  assert ref["mesh"].tolist() == [1, 1]
  assert len([k for k in ref if k.startswith("params/")]) > 20
  for name in ("8x1", "4x2", "2x4"):
    got = {k[len(name) + 1:]: v for k, v in res.items() if k.startswith(name + "/")}
    assert got["mesh"].tolist() == list(map(int, name.split("x")))
    assert sorted(got) == sorted(ref)
    for key in ("loss", "step_loss", "eval_loss"):
      np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, err_msg=f"{name} {key}")
    for key in ("class_emb", "image_emb"):
      np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
    for key in ref:
      if key.startswith("grads/"):
        np.testing.assert_allclose(got[key], ref[key], rtol=2e-4, atol=2e-6, err_msg=f"{name} {key}")
      elif key.startswith("params/"):
        if key.endswith("key/bias"):
          continue  # softmax ignores the key bias: its gradient is rounding noise Adam amplifies
        np.testing.assert_allclose(got[key], ref[key], rtol=2e-4, atol=2e-6, err_msg=f"{name} {key}")
  # partition_states: AdamW moments of the [1000, 32] token embedding split over data too.
  assert res["4x2/mu_shard"].tolist() == [500, 8]
