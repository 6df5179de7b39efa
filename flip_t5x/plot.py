r"""Training curves of one or more runs, read from their `MODEL_DIR/metrics.jsonl`.

  python -m flip_t5x.plot runs/demo/pretrain runs/other [--output=curves.png]

Panels: loss, zero-shot top-1 and images/s against step, and again against wall-clock seconds
(the trainer's `uptime` records) where a run has them; one line per run, labelled by its
directory. Lines of metrics.jsonl that are not JSON objects are skipped and counted on stderr
(flip_t5x.run_metrics reads them).
Needs no accelerator and no TensorFlow: matplotlib's Agg backend draws straight to a PNG.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, List, Sequence, Tuple

from absl import flags

from flip_t5x.run_metrics import (IMAGES_PER_SECOND, LOSS, METRICS_FILE, TOP1_SUFFIX, UPTIME,
                                  ZEROSHOT_PREFIX, MetricsError, Series, read_records, series,
                                  wall_time)
from flip_t5x.runtime import gin_utils

_OUTPUT = flags.DEFINE_string("output", "curves.png", "Where to write the PNG.")


class PlotError(ValueError):
  """A command line that names no run; the message says how to call the binary."""


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


if __name__ == "__main__":
  gin_utils.run(main, bad_input=(PlotError, MetricsError))
