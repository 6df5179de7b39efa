"""Configuration errors end the binaries with one line naming the binding or path, exit status 2.

Each case runs `python -m flip_t5x.train` (or another binary) in a fresh process; the cases run
concurrently (each is mostly imports). Besides the message, each check makes sure the error came
before the model was set up: train logs "configuration checked; setting up the model" right after
its checks (test_train_webdataset.py sees that line in a run that trains), and it creates
MODEL_DIR only after that line.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import subprocess
import sys
import time
from typing import Dict, List, Sequence, Tuple

import gin
import pytest

from flip_t5x.runtime import gin_utils
import test_data_pipeline as dp
import test_train_helpers as h

LENGTHS = "--gin.TASK_FEATURE_LENGTHS={'image': 32, 'targets': 16}"
SETUP_LINE = "configuration checked; setting up the model"
IMG2DATASET = ["--gin.MIXTURE_OR_TASK_NAME='flip_img2dataset'", "--gin.MIXTURE_OR_TASK_MODULE=None"]


@dataclasses.dataclass
class Case:
  args: List[str]
  expected: Sequence[str]  # in the error line
  binary: str = "train"
  num_devices: int = 1
  model_dir: bool = True  # bind MODEL_DIR to a fresh path (which must not be created)
  prefix: str = "configuration error:"  # after "flip_t5x.<binary>: "


def _cases(tmp: str) -> Dict[str, Case]:
  pattern = os.path.join(tmp, "no_such_dir", "*.tar")
  shards = os.path.join(tmp, "shards")
  os.makedirs(shards)
  open(os.path.join(shards, "00000.tar"), "wb").close()
  vocab = os.path.join(tmp, "no_such_vocab.txt")
  images = os.path.join(tmp, "images")
  os.makedirs(images)
  with open(os.path.join(images, "a.jpg"), "wb") as f:
    f.write(dp._image("JPEG"))
  model = ["--gin_file=gin_configs/models/flip_tiny.gin"]
  train = [LENGTHS, "--gin.TRAIN_STEPS=3"]
  return {
      "unknown_binding": Case(["--gin.partitioning.PjitPartitioner.bogus=1"],
                              ["bogus", "PjitPartitioner"]),
      "required_unset": Case(train, ["MODEL_DIR", "gin_configs/runs/pretrain.gin"],
                             model_dir=False),
      "wrong_type": Case([LENGTHS, "--gin.TRAIN_STEPS='abc'"], ["total_steps", "abc"]),
      "t5x_trainer_actions": Case(train + ["--gin.train_script.train.actions={'train': ['x']}"],
                                  ["train.actions", "not supported by flip_t5x"]),
      "missing_gin_file": Case(["--gin_file=gin_configs/no_such_file.gin"], ["no_such_file.gin"]),
      "malformed_flag": Case(["--gin.TRAIN_STEPS"], ["--gin.TRAIN_STEPS", "--gin.NAME=VALUE"]),
      "mask_ratio_out_of_range": Case(train + ["--gin.MASK_RATIO=1.5"],
                                      ["mask_ratio", "1.5", "MODEL/FlipModel"]),
      "batch_not_divisible_by_devices": Case(train + ["--gin.BATCH_SIZE=6"],
                                             ["BATCH_SIZE", "6", "4 devices"], num_devices=4),
      "data_pattern_matching_nothing": Case(
          IMG2DATASET + train + [f"--gin.TRAIN_DATA_PATTERN='{pattern}'"],
          ["flip_img2dataset", pattern, "matches no file"]),
      "missing_vocabulary_file": Case(
          IMG2DATASET + train + [f"--gin.TRAIN_DATA_PATTERN='{shards}/*.tar'",
                                 f"--gin.VOCAB_FILE='{vocab}'"], ["VOCAB_FILE", vocab]),
      # The data must come at the model's sizes (32 px, 16 ids): other lengths would train
      # without a word (rc 0 before), a patch size that does not divide the image ended in a
      # traceback.
      "task_lengths_differ_from_model": Case(
          ["--gin.TRAIN_STEPS=3", "--gin.TASK_FEATURE_LENGTHS={'image': 64, 'targets': 8}"],
          ["TASK_FEATURE_LENGTHS", "{'image': 64, 'targets': 8}", "{'image': 32, 'targets': 16}"]),
      "patch_size_not_dividing_image": Case(
          train + ["--gin.network.ImageTowerConfig.patch_size=5"],
          ["image_size 32", "patch size 5"]),
      "eval_lengths_differ_from_model": Case(
          model + ["--gin_file=gin_configs/runs/eval.gin",
                   "--gin.TASK_FEATURE_LENGTHS={'image': 64, 'targets': 16}",
                   f"--gin.MIXTURE_OR_TASK_NAME='{h.TASK}'",
                   "--gin.MIXTURE_OR_TASK_MODULE='test_train_helpers'",
                   f"--gin.CHECKPOINT_PATH='{tmp}/no_checkpoint'",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp}/eval'"], ["TASK_FEATURE_LENGTHS", "64"],
          binary="eval", model_dir=False, prefix="error:"),
      # Binaries that build only the model share gin_utils' reporting.
      "model_info_mask_ratio": Case(model + ["--gin.MASK_RATIO=1.5"], ["mask_ratio", "1.5"],
                                    binary="model_info", model_dir=False),
      "predict_mask_ratio": Case(
          model + ["--gin.MASK_RATIO=1.5", f"--checkpoint={tmp}/no_checkpoint",
                   f"--images={images}", "--labels=red,blue"], ["mask_ratio", "1.5"],
          binary="predict", model_dir=False),
      "eval_mask_ratio": Case(
          model + ["--gin_file=gin_configs/runs/eval.gin", "--gin.MASK_RATIO=1.5",
                   f"--gin.MIXTURE_OR_TASK_NAME='{h.TASK}'",
                   "--gin.MIXTURE_OR_TASK_MODULE='test_train_helpers'",
                   f"--gin.CHECKPOINT_PATH='{tmp}/no_checkpoint'",
                   f"--gin.EVAL_OUTPUT_DIR='{tmp}/eval'"], ["mask_ratio", "1.5"],
          binary="eval", model_dir=False),
  }


def _run(name: str, case: Case, tmp: str) -> Tuple[object, float, str]:
  model_dir = os.path.join(tmp, f"run_{name}")
  args = list(case.args)
  if case.binary == "train":
    args = h.BASE_ARGS[:4] + ([f"--gin.MODEL_DIR='{model_dir}'"] if case.model_dir else []) + args
  start = time.time()
  proc = h.run_binary(case.binary, args, timeout=300, num_devices=case.num_devices)
  return proc, time.time() - start, model_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("gin_errors"))
  cases = _cases(tmp)
  assert sorted(cases) == sorted(NAMES)
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    futures = {name: pool.submit(_run, name, case, tmp) for name, case in cases.items()}
    return {name: (cases[name],) + f.result() for name, f in futures.items()}


NAMES = ["unknown_binding", "required_unset", "wrong_type", "missing_gin_file", "malformed_flag",
         "mask_ratio_out_of_range", "batch_not_divisible_by_devices",
         "data_pattern_matching_nothing", "missing_vocabulary_file", "model_info_mask_ratio",
         "predict_mask_ratio", "eval_mask_ratio", "task_lengths_differ_from_model",
         "patch_size_not_dividing_image", "eval_lengths_differ_from_model", "t5x_trainer_actions"]


@pytest.mark.e2e
@pytest.mark.parametrize("name", NAMES)
def test_configuration_error(results, name):
  case, proc, seconds, model_dir = results[name]
  err = proc.stderr
  assert proc.returncode == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines()
           if l.startswith(f"flip_t5x.{case.binary}: {case.prefix}")]
  assert len(lines) == 1, err[-3000:]
  for text in case.expected:
    assert text in lines[0], lines[0]
  assert SETUP_LINE not in err and "Compiling" not in err, err[-3000:]
  assert not os.path.exists(model_dir), "MODEL_DIR was created: the error came after model set-up"
  print(f"{name}: exit 2 after {seconds:.1f}s: {lines[0]}")


@gin.configurable(module="test_train_gin_errors")
def flip_test_part(value: float = 0.5) -> float:
  if not 0 <= value < 1:
    raise ValueError(f"value must be in [0, 1), got {value}")
  return value


def flip_test_body(part: float, fail: bool) -> float:
  if fail:
    raise RuntimeError("a failure while running, not a configuration error")
  return part


configured_body = gin.external_configurable(flip_test_body, module="test_train_gin_errors")


@pytest.mark.usefixtures("clean_gin_and_counters")
def test_only_errors_building_the_arguments_are_configuration_errors():
  body = configured_body
  gin.parse_config(
      "test_train_gin_errors.flip_test_body.part = @test_train_gin_errors.flip_test_part()")
  for fail in (False, True):
    gin.bind_parameter("test_train_gin_errors.flip_test_body.fail", fail)
    gin.bind_parameter("test_train_gin_errors.flip_test_part.value", 1.5)
    with pytest.raises(gin_utils.GinConfigError, match=r"got 1\.5 \(in flip_test_part\)$"):
      gin_utils.call_configured(flip_test_body, body)
    gin.bind_parameter("test_train_gin_errors.flip_test_part.value", 0.25)
    if fail:
      with pytest.raises(RuntimeError, match="while running"):
        gin_utils.call_configured(flip_test_body, body)
    else:
      assert gin_utils.call_configured(flip_test_body, body) == 0.25


# A binary as `gin_utils.run` ends it: its main raises what the argument names.
_PROGRAM = '''
import sys
from flip_t5x.runtime import gin_utils

class BadInput(ValueError):
  pass

class Diverged(FloatingPointError):
  pass

ERRORS = {
    "config": gin_utils.GinConfigError("in gin binding 'X = 1': no configurable X"),
    "bad_input": BadInput("no checkpoint at /x:\\n  a directory holding a.txt"
                          "\\n  In call to configurable 'train' (<function train at 0x1>)"),
    "failed": gin_utils.Failed("none of the 3 images could be read"),
    "diverged": Diverged("loss is nan at step 3"),
    "bug": KeyError("a bug"),
}

def main(argv):
  raise ERRORS[argv[1]]

gin_utils.run(main, bad_input=(BadInput,), exit_status={Diverged: 3})
'''


@pytest.mark.parametrize("case, status, lines", [
    ("config", 2, ["prog: configuration error: in gin binding 'X = 1': no configurable X"]),
    ("bad_input", 2, ["prog: error: no checkpoint at /x:", "  a directory holding a.txt"]),
    ("failed", 1, ["prog: error: none of the 3 images could be read"]),
    ("diverged", 3, ["prog: error: loss is nan at step 3"]),
    ("bug", 1, None),  # not declared: the traceback, as Python ends
])
@pytest.mark.e2e
def test_run_is_the_one_path_from_an_error_to_a_message_and_an_exit_status(tmp_path, case,
                                                                         status, lines):
  program = tmp_path / "prog"
  program.write_text(_PROGRAM)
  proc = subprocess.run([sys.executable, str(program), case], cwd=h.ROOT, env=h.env(),
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == status, proc.stderr[-3000:]
  if lines is None:
    assert "Traceback" in proc.stderr and proc.stderr.strip().endswith("KeyError: 'a bug'")
  else:
    assert proc.stderr.strip().splitlines() == lines  # gin's call site left out
