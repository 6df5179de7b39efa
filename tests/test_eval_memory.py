"""t5x.eval streams the eval rows (issue 26 item 9) and gets the numbers it got from memory.

With `use_memory_cache` on, seqio's Evaluator keeps every task row (a float32 image each) for the
whole run: ~0.8 MB a row at 224 px, ~45 GB for ImageNet-1K (docs/performance.md, Measurements).
runs/eval.gin turns it off where t5x.eval reads it: t5x builds the Evaluator with
`use_memory_cache=DatasetConfig.use_memory_cache`, overriding any `seqio.Evaluator` binding.
Streaming re-reads the data for each of the Evaluator's passes, so the passes must agree.
"""
import dataclasses
import os

import gin
import jax
import numpy as np
import pytest

from test_eval_e2e import _image, _predict_with_aux_fn
from test_eval_e2e import t5x_eval_arguments, t5x_evaluator
from test_gin_configs import binaries_as_main  # pylint: disable=unused-import  (autouse)
import test_train_helpers as h
from test_train_helpers import ROOT

pytestmark = pytest.mark.e2e  # two whole t5x evaluations

TASK = "flip_folder_zeroshot_seqio"
CLASSES = ("cat", "dog", "red car")
PROMPT_ROWS = len(CLASSES) * 7  # FLIP's 7 templates


def _image_rows(evaluator):
  rows = list(evaluator.cached_task_datasets[TASK].as_numpy_iterator())
  assert len(rows) == PROMPT_ROWS + 2 * len(CLASSES)
  return np.stack([r["image"] for r in rows[PROMPT_ROWS:]])


def test_t5x_eval_streams_rows_and_scores_them_as_the_cache_did(tmp_path):
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "the", "cat", "dog", "red",
           "car"]
  (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n")
  rng = np.random.RandomState(0)
  for i, c in enumerate(CLASSES):
    (tmp_path / "zeroshot" / c).mkdir(parents=True)
    for j in range(2):
      _image(rng, i).save(tmp_path / "zeroshot" / c / f"{j}.png")

  model = h.gin_model()  # (clears gin: before the eval file is parsed)
  params = model.get_initial_variables(
      jax.random.PRNGKey(0), {"images": (1, 32, 32, 3), "texts": (1, 16)})["params"]
  args = t5x_eval_arguments(
      [os.path.join(ROOT, "gin_configs/models/flip_tiny.gin"),
       os.path.join(ROOT, "gin_configs/runs/eval.gin")],
      [f"MIXTURE_OR_TASK_NAME = '{TASK}'", "CHECKPOINT_PATH = '/unused'",
       f"EVAL_OUTPUT_DIR = '{tmp_path}/streamed'", f"VOCAB_FILE = '{tmp_path}/vocab.txt'",
       f"ZEROSHOT_FOLDER = '{tmp_path}/zeroshot'", "utils.DatasetConfig.split = 'validation'"])
  cfg = args["dataset_cfg"]
  assert cfg.use_memory_cache is False  # what t5x.eval hands the Evaluator
  assert gin.query_parameter("seqio.Evaluator.use_memory_cache") is False
  streamed = t5x_evaluator(args)
  cached = t5x_evaluator(dict(args, dataset_cfg=dataclasses.replace(cfg, use_memory_cache=True),
                              output_dir=str(tmp_path / "cached")))

  # The same numbers: the streamed Evaluator reads the folder again for its predictions and
  # again for its targets; the cached one reads it once.
  results, predict_with_aux = [], _predict_with_aux_fn(model, params)
  for evaluator in (streamed, cached):
    metrics, _ = evaluator.evaluate(compute_metrics=True, step=1,
                                    predict_with_aux_fn=predict_with_aux)
    results.append(metrics.result()[TASK])
    evaluator.close()
  assert results[0] == results[1]
  assert results[0]["num_examples"] == 2 * len(CLASSES)

  # Streamed means no row is held: a photo replaced after construction is what the next pass
  # reads, while the cache still serves the photo it read first.
  before = _image_rows(streamed)
  np.testing.assert_array_equal(_image_rows(cached), before)
  _image(np.random.RandomState(1), 2).save(tmp_path / "zeroshot" / "cat" / "0.png")
  assert not np.array_equal(_image_rows(streamed)[0], before[0])
  np.testing.assert_array_equal(_image_rows(cached), before)
