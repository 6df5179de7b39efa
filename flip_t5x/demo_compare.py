r"""FLIP against unmasked training for the same wall-clock time: the paper's Figure 1 at demo scale.

  python -m flip_t5x.demo_compare --run_dir=runs/demo --equal_time_steps
  python -m flip_t5x.demo_compare --run_dir=runs/demo [--output=runs/demo/flip_vs_unmasked.png]

Reads the runs `scripts/demo.sh --compare` leaves in RUN_DIR (each a MODEL_DIR with its
metrics.jsonl): `pretrain` (masked), `tuned` (unmasked tuning from it) and `unmasked` (the same
model and recipe, masking off, from scratch).

`--equal_time_steps` prints the unmasked run's step count, fixed before it starts so the run stays
seeded and repeatable: the masked run's training seconds (steps x batch / its images/s) times the
unmasked images/s, over the batch. The unmasked rate is the tuning run's: the tuning trains the
same network on the same batches with masking off, so it measures that rate at no extra cost.

Otherwise it prints a table (steps, images seen, images/s, wall seconds, zero-shot top-1 at equal
time and at the end), writes a PNG of zero-shot top-1 against wall-clock seconds (the tuning drawn
from where the masked run ends) and prints one JSON object, also written to RUN_DIR/compare.json.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Any, Dict, Optional, Sequence

from absl import flags

from flip_t5x.run_metrics import (IMAGES_PER_SECOND, TOP1_SUFFIX, UPTIME, ZEROSHOT_PREFIX,
                                  MetricsError, Series, read_records, series_of, wall_time)
from flip_t5x.runtime import gin_utils

MASKED, UNMASKED, TUNED = "pretrain", "unmasked", "tuned"
LABELS = {MASKED: "masked (FLIP)", UNMASKED: "unmasked", TUNED: "masked + unmasked tuning"}
STEPS_PER_SECOND = "timing/steps_per_second"


@dataclasses.dataclass(frozen=True)
class Run:
  """One finished training run, as its metrics.jsonl tells it."""
  model_dir: str
  curves: Dict[str, Series]
  batch_size: int

  @property
  def steps(self) -> int:
    return int(self.curves[UPTIME][0][-1])

  @property
  def wall_seconds(self) -> float:
    """The trainer's uptime at the last step: compilation and periodic evals included."""
    return self.curves[UPTIME][1][-1]

  @property
  def images_per_second(self) -> float:
    """The median of the trainer's throughput windows, the first (input warm-up) left out."""
    rates = self.curves[IMAGES_PER_SECOND][1]
    return statistics.median(rates[1:] or rates)

  @property
  def top1(self) -> Series:
    """Zero-shot top-1 (%) against wall-clock seconds."""
    curve = wall_time(self.curves, _zeroshot_key(self))
    if not curve[0]:
      raise MetricsError(f"{self.model_dir}: no zero-shot evaluation at a step with an uptime "
                         "record (EVAL_PERIOD should be a multiple of the stats period)")
    return curve


def _zeroshot_key(run: Run) -> str:
  keys = [k for k in run.curves if k.startswith(ZEROSHOT_PREFIX) and k.endswith(TOP1_SUFFIX)]
  if len(keys) != 1:
    raise MetricsError(f"{run.model_dir}: expected one zero-shot task's top-1, found "
                       f"{keys or 'none'} (the demo's training runs evaluate zero-shot)")
  return keys[0]


def load_run(model_dir: str) -> Run:
  """Reads MODEL_DIR/metrics.jsonl; the batch size is images/s over steps/s of the same report."""
  records, _ = read_records(model_dir)
  curves = series_of(records)
  for key in (UPTIME, IMAGES_PER_SECOND):
    if key not in curves:
      raise MetricsError(f"{model_dir}: metrics.jsonl has no {key!r} records "
                         "(is the run finished?)")
  batches = [r[IMAGES_PER_SECOND] / r[STEPS_PER_SECOND] for r in records
             if r.get(STEPS_PER_SECOND) and IMAGES_PER_SECOND in r]
  if not batches:
    raise MetricsError(f"{model_dir}: metrics.jsonl has no {STEPS_PER_SECOND!r} beside "
                       f"{IMAGES_PER_SECOND!r} to tell the batch size from")
  return Run(model_dir, curves, int(round(batches[0])))


@dataclasses.dataclass(frozen=True)
class EqualTime:
  """The unmasked step count that trains for the masked run's time, and what it came from."""
  masked_steps: int
  masked_images_per_second: float
  unmasked_images_per_second: float
  batch_size: int
  unmasked_steps: int


def equal_time_steps(masked: Run, unmasked_rate: Run) -> EqualTime:
  """Steps at `unmasked_rate`'s throughput that take as long as `masked`'s training steps."""
  seconds = masked.steps * masked.batch_size / masked.images_per_second
  steps = max(1, round(seconds * unmasked_rate.images_per_second / unmasked_rate.batch_size))
  return EqualTime(masked.steps, masked.images_per_second, unmasked_rate.images_per_second,
                   unmasked_rate.batch_size, steps)


def top1_at(curve: Series, seconds: float) -> float:
  """The zero-shot top-1 of the evaluation nearest `seconds` (the earlier one on a tie)."""
  times, values = curve
  if not times:
    raise MetricsError("no zero-shot evaluation with a wall-clock time")
  return values[min(range(len(times)), key=lambda i: (abs(times[i] - seconds), times[i]))]


def tuned_curve(masked: Run, tuned: Run) -> Series:
  """The tuning's top-1 from where the masked run ends: its start is the masked run's last eval."""
  start = masked.wall_seconds
  times, values = tuned.top1
  return [start] + [start + t for t in times], [masked.top1[1][-1]] + values


def _row(run: Run, curve: Series, equal_seconds: Optional[float], steps: int, images: int,
         wall: float) -> Dict[str, Any]:
  return {"steps": steps, "images_seen": images,
          "images_per_second": round(run.images_per_second, 1),
          "wall_seconds": round(wall, 1),
          "zeroshot_top1_at_equal_time": (None if equal_seconds is None
                                          else top1_at(curve, equal_seconds)),
          "zeroshot_top1_final": curve[1][-1],
          "curve": [list(point) for point in zip(*curve)]}


def compare(run_dir: str) -> Dict[str, Any]:
  """The comparison of RUN_DIR's three runs: the equal-time step count and one row per run."""
  masked, unmasked, tuned = (load_run(os.path.join(run_dir, n)) for n in (MASKED, UNMASKED, TUNED))
  equal = equal_time_steps(masked, tuned)
  t = masked.wall_seconds
  rows = {
      MASKED: _row(masked, masked.top1, t, masked.steps, masked.steps * masked.batch_size, t),
      UNMASKED: _row(unmasked, unmasked.top1, t, unmasked.steps,
                     unmasked.steps * unmasked.batch_size, unmasked.wall_seconds),
      TUNED: _row(tuned, tuned_curve(masked, tuned), None, masked.steps + tuned.steps,
                  masked.steps * masked.batch_size + tuned.steps * tuned.batch_size,
                  t + tuned.wall_seconds),
  }
  return {"equal_seconds": round(t, 1), "equal_time": dataclasses.asdict(equal), "runs": rows}


def table(summary: Dict[str, Any]) -> str:
  """The side-by-side table; the tuning row counts the masked run before it too."""
  at = f"@{summary['equal_seconds']:.0f}s"
  lines = [f"{'run':<26}{'steps':>7}{'images':>10}{'img/s':>8}{'wall s':>8}"
           f"{'top-1 ' + at:>13}{'final':>7}"]
  for name, r in summary["runs"].items():
    at_value = r["zeroshot_top1_at_equal_time"]
    lines.append(f"{LABELS[name]:<26}{r['steps']:>7}{r['images_seen']:>10}"
                 f"{r['images_per_second']:>8.0f}{r['wall_seconds']:>8.0f}"
                 f"{'-' if at_value is None else f'{at_value:.1f}':>13}"
                 f"{r['zeroshot_top1_final']:>7.1f}")
  e = summary["equal_time"]
  lines.append(f"equal time: {e['masked_steps']} masked steps at "
               f"{e['masked_images_per_second']:.0f} img/s = {e['unmasked_steps']} unmasked "
               f"steps at {e['unmasked_images_per_second']:.0f} img/s (batch {e['batch_size']})")
  return "\n".join(lines)


def figure(summary: Dict[str, Any]):
  """Zero-shot top-1 against wall-clock seconds, one line per run, the equal time marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, r in summary["runs"].items():
    times, values = zip(*r["curve"])
    ax.plot(times, values, marker="o", label=f"{LABELS[name]}, {r['steps']} steps")
  ax.axvline(summary["equal_seconds"], color="gray", linestyle=":",
             label=f"equal time ({summary['equal_seconds']:.0f} s)")
  ax.set_xlabel("wall-clock seconds of training")
  ax.set_ylabel("zero-shot top-1 (%)")
  ax.set_title("FLIP vs unmasked training at equal wall-clock time")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small", loc="lower right")
  fig.tight_layout()
  return fig


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise MetricsError(f"unexpected arguments {list(argv[1:])}; give --run_dir=DIR")
  run_dir = flags.FLAGS.run_dir
  if flags.FLAGS.equal_time_steps:
    equal = equal_time_steps(load_run(os.path.join(run_dir, MASKED)),
                             load_run(os.path.join(run_dir, TUNED)))
    print(equal.unmasked_steps, flush=True)
    return
  summary = compare(run_dir)
  output = flags.FLAGS.output or os.path.join(run_dir, "flip_vs_unmasked.png")
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  figure(summary).savefig(output, dpi=120)
  summary["png"] = output
  with open(os.path.join(run_dir, "compare.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f, indent=1)
  print(table(summary))
  print(json.dumps(summary), flush=True)


if __name__ == "__main__":
  flags.DEFINE_string("run_dir", "runs/demo", "The demo's run directory.")
  flags.DEFINE_string("output", None, "The PNG; default RUN_DIR/flip_vs_unmasked.png.")
  flags.DEFINE_bool("equal_time_steps", False,
                    "Only print the unmasked step count for the masked run's time.")
  gin_utils.run(main, bad_input=(MetricsError,))
