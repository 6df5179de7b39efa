r"""Training curves of one or more runs, read from their `MODEL_DIR/metrics.jsonl`.

  python -m flip_t5x.plot runs/demo/pretrain runs/other [--output=curves.png]

Panels: loss, zero-shot top-1 and images/s against step, and again against wall-clock seconds
(the trainer's `uptime` records) where a run has them; one line per run, labelled by its
directory. Lines of metrics.jsonl that are not JSON objects are skipped and counted on stderr.
Needs no accelerator and no TensorFlow: matplotlib's Agg backend draws straight to a PNG.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Sequence, Tuple

from absl import app
from absl import flags

METRICS_FILE = "metrics.jsonl"
LOSS, IMAGES_PER_SECOND, UPTIME = "loss", "timing/images_per_second", "uptime"
ZEROSHOT_PREFIX, TOP1_SUFFIX = "zeroshot/", "/top1"
Series = Tuple[List[float], List[float]]

_OUTPUT = flags.DEFINE_string("output", "curves.png", "Where to write the PNG.")


class PlotError(ValueError):
  """A run directory or metrics file that cannot be plotted; the message names it."""


def read_records(model_dir: str) -> Tuple[List[dict], int]:
  """The JSON-object lines of MODEL_DIR/metrics.jsonl, and how many other lines were skipped."""
  path = os.path.join(model_dir, METRICS_FILE)
  if not os.path.isdir(model_dir):
    raise PlotError(f"{model_dir!r} is not a directory")
  if not os.path.isfile(path):
    raise PlotError(f"{path!r} does not exist (flip_t5x.train writes it into MODEL_DIR)")
  records, skipped = [], 0
  with open(path, encoding="utf-8") as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        record = None
      if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
        records.append(record)
      else:
        skipped += 1
  return records, skipped


def _wanted(key: str) -> bool:
  return key in (LOSS, IMAGES_PER_SECOND, UPTIME) or (
      key.startswith(ZEROSHOT_PREFIX) and key.endswith(TOP1_SUFFIX))


def series_of(records: Sequence[dict]) -> Dict[str, Series]:
  """{metric: (steps, values)} of the plotted metrics, by step; a repeated step keeps its last."""
  by_key: Dict[str, Dict[int, float]] = {}
  for record in records:
    for key, value in record.items():
      if _wanted(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
        by_key.setdefault(key, {})[int(record["step"])] = float(value)
  return {key: (sorted(points), [points[s] for s in sorted(points)])
          for key, points in by_key.items()}


def series(model_dir: str) -> Dict[str, Series]:
  """The series `figure` draws for one run: loss, zeroshot/<task>/top1, images/s, uptime."""
  records, _ = read_records(model_dir)
  if not records:
    raise PlotError(f"{os.path.join(model_dir, METRICS_FILE)!r} has no metrics records")
  return series_of(records)


def wall_time(run: Dict[str, Series], key: str) -> Series:
  """`key`'s values against the run's uptime (seconds) at the same steps."""
  uptime = dict(zip(*run.get(UPTIME, ([], []))))
  steps, values = run[key]
  kept = [(uptime[s], v) for s, v in zip(steps, values) if s in uptime]
  return [t for t, _ in kept], [v for _, v in kept]


def _panels(run: Dict[str, Series]) -> List[Tuple[str, str]]:
  """(panel title, metric key) of every line this run contributes."""
  zeroshot = sorted(k for k in run if k.startswith(ZEROSHOT_PREFIX))
  return ([("loss", LOSS)] * (LOSS in run) + [("zero-shot top-1 (%)", k) for k in zeroshot]
          + [("images/s", IMAGES_PER_SECOND)] * (IMAGES_PER_SECOND in run))


def figure(model_dirs: Sequence[str]):
  """A matplotlib Figure: rows (step, wall time where any run has it) x (loss, top-1, img/s)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  runs = {d: series(d) for d in model_dirs}
  titles = ["loss", "zero-shot top-1 (%)", "images/s"]
  with_time = any(UPTIME in run for run in runs.values())
  rows = 2 if with_time else 1
  fig, axes = plt.subplots(rows, 3, figsize=(15, 4.5 * rows), squeeze=False)
  for d, run in runs.items():
    for title, key in _panels(run):
      label = d if not key.startswith(ZEROSHOT_PREFIX) else (
          f"{d} {key[len(ZEROSHOT_PREFIX):-len(TOP1_SUFFIX)]}")
      col = titles.index(title)
      axes[0][col].plot(*run[key], marker=".", label=label)
      if with_time and UPTIME in run:
        axes[1][col].plot(*wall_time(run, key), marker=".", label=label)
  for row in range(rows):
    for col, title in enumerate(titles):
      ax = axes[row][col]
      ax.set_title(title)
      ax.set_xlabel("step" if row == 0 else "wall time (s)")
      ax.grid(alpha=0.3)
      if ax.lines:
        ax.legend(fontsize="small")
  fig.tight_layout()
  return fig


def main(argv: Sequence[str]) -> None:
  model_dirs = list(argv[1:])
  if not model_dirs:
    raise PlotError("give at least one MODEL_DIR: python -m flip_t5x.plot MODEL_DIR [MODEL_DIR...]")
  for d in model_dirs:
    _, skipped = read_records(d)
    if skipped:
      print(f"flip_t5x.plot: skipped {skipped} unreadable line(s) of "
            f"{os.path.join(d, METRICS_FILE)}", file=sys.stderr)
  fig = figure(model_dirs)
  out_dir = os.path.dirname(os.path.abspath(_OUTPUT.value))
  os.makedirs(out_dir, exist_ok=True)
  fig.savefig(_OUTPUT.value, dpi=100)
  print(_OUTPUT.value, flush=True)


def _main_reporting_errors(argv: Sequence[str]) -> None:
  try:
    main(argv)
  except PlotError as e:
    print(f"flip_t5x.plot: error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(_main_reporting_errors)
