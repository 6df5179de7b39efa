"""8 simulated CPU devices as 8x1, 4x2 and 2x4 meshes give the loss, gradients and update of 1.

Runs in a subprocess because the device count is fixed when jax starts.
"""
from __future__ import annotations

import json
import subprocess
import sys

import test_train_helpers as h

SCRIPT = r'''
import json, gin, jax, numpy as np
import jax.numpy as jnp
from flip_t5x.runtime import optimizers, partitioning, train_state, trainer
assert jax.device_count() == 8
gin.parse_config_file("gin_configs/models/flip_tiny.gin")
model = gin.query_parameter("%MODEL").scoped_configurable_fn()
rng = np.random.default_rng(0)
batch = {"images": rng.normal(size=(16, 32, 32, 3)).astype(np.float32),
         "texts": rng.integers(0, 1000, size=(16, 16)).astype(np.int32)}
shapes = {"images": (16, 32, 32, 3), "texts": (16, 16)}
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
  t = trainer.FlipTrainer(model=model, train_state=state, partitioner=part, eval_names=[],
                          summary_dir=None, train_state_axes=layout, rng=jax.random.PRNGKey(1))
  gb = {k: jax.device_put(v, part.data_sharding) for k, v in batch.items()}
  grad_fn = part.partition(
      lambda p, b: jax.value_and_grad(lambda q: model.loss_fn(q, b, jax.random.PRNGKey(3))[0])(p),
      in_axis_resources=(layout.specs.params, {"images": jax.sharding.PartitionSpec("data"),
                                               "texts": jax.sharding.PartitionSpec("data")}),
      out_axis_resources=None)
  loss, grads = grad_fn(state.params, gb)
  new_state, scalars = t.train_step(state, gb)
  shard_shapes = {str(k): v.sharding.shard_shape(v.shape) for k, v in
                  [("mu_token_embedding", new_state.opt_state[0].mu["text_tower"]["token_embedding"])]}
  out[name] = {"loss": float(loss), "step_loss": [float(scalars["loss"])],
               "grads": {"/".join(map(str, k)): np.asarray(v).ravel()[:64].tolist()
                         for k, v in jax.tree_util.tree_leaves_with_path(grads)},
               "params": {"/".join(map(str, k)): np.asarray(v).ravel()[:64].tolist()
                          for k, v in jax.tree_util.tree_leaves_with_path(new_state.params)},
               "mesh": dict(part.mesh.shape), "mu_shard": shard_shapes}
print("RESULT" + json.dumps(out))
'''


def test_meshes_match_one_device():
  proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=h.ROOT, env=h.env(8),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-5000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0]
  res = json.loads(line[len("RESULT"):])
  ref = res.pop("1x1")
  assert ref["mesh"] == {"data": 1, "model": 1}
  for name, r in res.items():
    d, m = map(int, name.split("x"))
    assert r["mesh"] == {"data": d, "model": m}
    assert abs(r["loss"] - ref["loss"]) < 1e-5, (name, r["loss"], ref["loss"])
    for a, b in zip(r["step_loss"], ref["step_loss"]):
      assert abs(a - b) < 1e-5, (name, a, b)
    for k, g in ref["grads"].items():
      import numpy as np
      np.testing.assert_allclose(r["grads"][k], g, rtol=2e-4, atol=2e-6, err_msg=f"{name} {k}")
    for k, p in ref["params"].items():
      import numpy as np
      if "['key']/['bias']" in k:
        continue  # softmax ignores the key bias: its gradient is rounding noise Adam amplifies
      np.testing.assert_allclose(r["params"][k], p, rtol=2e-4, atol=2e-6, err_msg=f"{name} {k}")
  # partition_states: AdamW moments of the [1000, 32] token embedding split over data too.
  assert res["4x2"]["mu_shard"]["mu_token_embedding"] == [500, 8]
  assert res["2x4"]["mu_shard"]["mu_token_embedding"] == [250, 16]
