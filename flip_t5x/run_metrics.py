"""A run's metrics read back from `MODEL_DIR/metrics.jsonl`, as flip_t5x.train writes them.

The one reader for tools that look at finished runs (`flip_t5x.plot`, `flip_t5x.demo_compare`):
records by step, the curves' metrics as (steps, values) series, and a metric against the
trainer's wall-clock `uptime` records. Lines that are not JSON objects with a step are skipped and
counted, so a run cut off mid-line still reads.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

METRICS_FILE = "metrics.jsonl"
LOSS, IMAGES_PER_SECOND, UPTIME = "loss", "timing/images_per_second", "uptime"
ZEROSHOT_PREFIX, TOP1_SUFFIX = "zeroshot/", "/top1"
Series = Tuple[List[float], List[float]]


class MetricsError(ValueError):
  """A run directory or metrics file that cannot be read; the message names it."""


def read_records(model_dir: str) -> Tuple[List[dict], int]:
  """The JSON-object lines of MODEL_DIR/metrics.jsonl, and how many other lines were skipped."""
  path = os.path.join(model_dir, METRICS_FILE)
  if not os.path.isdir(model_dir):
    raise MetricsError(f"{model_dir!r} is not a directory")
  if not os.path.isfile(path):
    raise MetricsError(f"{path!r} does not exist (flip_t5x.train writes it into MODEL_DIR)")
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
  """{metric: (steps, values)} of the curves' metrics, by step; a repeated step keeps its last."""
  by_key: Dict[str, Dict[int, float]] = {}
  for record in records:
    for key, value in record.items():
      if _wanted(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
        by_key.setdefault(key, {})[int(record["step"])] = float(value)
  return {key: (sorted(points), [points[s] for s in sorted(points)])
          for key, points in by_key.items()}


def series(model_dir: str) -> Dict[str, Series]:
  """One run's curves: loss, zeroshot/<task>/top1, images/s and uptime, each by step."""
  records, _ = read_records(model_dir)
  if not records:
    raise MetricsError(f"{os.path.join(model_dir, METRICS_FILE)!r} has no metrics records")
  return series_of(records)


def wall_time(run: Dict[str, Series], key: str) -> Series:
  """`key`'s values against the run's uptime (seconds) at the same steps."""
  uptime = dict(zip(*run.get(UPTIME, ([], []))))
  steps, values = run[key]
  kept = [(uptime[s], v) for s, v in zip(steps, values) if s in uptime]
  return [t for t, _ in kept], [v for _, v in kept]
