r"""Summarises a demo run (scripts/demo.sh): a short table, then one JSON object as the last line.

  python -m flip_t5x.demo_summary --run_dir=runs/demo --wall_seconds=312

Reads what the binaries wrote: `<stage>/metrics.jsonl` of the two training runs and
`eval_<stage>/zeroshot_metrics.json` of the two evaluations.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Sequence

from absl import flags

from flip_t5x.runtime import gin_utils

STAGES = ("pretrain", "tuned")


def read_jsonl(path: str) -> List[Dict[str, Any]]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def stage_summary(run_dir: str, stage: str) -> Dict[str, Any]:
  """Steps, median training images/s and zero-shot metrics of one stage."""
  rows = read_jsonl(os.path.join(run_dir, stage, "metrics.jsonl"))
  rates = sorted(r["timing/images_per_second"] for r in rows if "timing/images_per_second" in r)
  losses = [r["loss"] for r in rows if "loss" in r]
  with open(os.path.join(run_dir, f"eval_{stage}", "zeroshot_metrics.json"), encoding="utf-8") as f:
    zs = json.load(f)
  return {
      "steps": max(r["step"] for r in rows),
      "final_loss": losses[-1] if losses else None,
      "train_images_per_second": rates[len(rates) // 2] if rates else None,
      "zeroshot_top1": zs["top1"],
      "zeroshot_top5": zs["top5"],
      "num_classes": zs["num_classes"],
      "num_examples": zs["num_examples"],
  }


def summarize(run_dir: str, wall_seconds: float) -> Dict[str, Any]:
  stages = {s: stage_summary(run_dir, s) for s in STAGES}
  final = stages["tuned"]
  return {
      "zeroshot_top1": final["zeroshot_top1"],
      "zeroshot_top5": final["zeroshot_top5"],
      "chance": 100.0 / final["num_classes"],
      "wall_seconds": round(wall_seconds, 1),
      "train_images_per_second": stages["pretrain"]["train_images_per_second"],
      "stages": stages,
  }


def table(summary: Dict[str, Any]) -> str:
  lines = [f"{'stage':<26}{'steps':>7}{'img/s':>9}{'top-1 %':>9}{'top-5 %':>9}"]
  names = {"pretrain": "masked pre-training (0.5)", "tuned": "+ unmasked tuning"}
  for stage, s in summary["stages"].items():
    rate = s["train_images_per_second"] or 0.0
    lines.append(f"{names[stage]:<26}{s['steps']:>7}{rate:>9.0f}"
                 f"{s['zeroshot_top1']:>9.1f}{s['zeroshot_top5']:>9.1f}")
  lines.append(f"chance: {summary['chance']:.1f}% top-1 over {summary['stages']['tuned']['num_classes']}"
               f" classes; wall time {summary['wall_seconds']:.0f} s")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  del argv
  summary = summarize(flags.FLAGS.run_dir, flags.FLAGS.wall_seconds)
  print(table(summary))
  print(json.dumps(summary))


if __name__ == "__main__":
  flags.DEFINE_string("run_dir", "runs/demo", "The demo's run directory.")
  flags.DEFINE_float("wall_seconds", 0.0, "Wall time of the whole demo, measured by the script.")
  gin_utils.run(main)
