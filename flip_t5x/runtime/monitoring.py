"""What users see while a run goes: throughput, FLOP utilisation, metric writers, progress line.

FLIP-only options live in `MonitoringConfig` (gin: `monitoring.MonitoringConfig.X`), which t5x
never sees: flip_t5x.train hands it to the loop as `train(monitoring_cfg=...)`. Writers: clu's
default writer into MODEL_DIR (TensorBoard + console; console only on processes other than 0)
and `metrics.jsonl`, one JSON object of scalars per line, for scripts.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, TextIO

from absl import logging
from clu import metric_writers
from clu import periodic_actions
import jax
import jax.numpy as jnp
import numpy as np

from flip_t5x import flops
from flip_t5x import progress

# Dense bf16 peak FLOP/s per device, for the utilisation estimate (vendor figures).
PEAK_FLOPS_BY_DEVICE_KIND = (
    ("TPU v3", 123e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
)


@dataclasses.dataclass
class MonitoringConfig:
  """FLIP-only run options (gin: `monitoring.MonitoringConfig.X = ...`).

  profile_steps: how many steps to trace with the jax profiler into MODEL_DIR (0 = none), from
    `profile_first_step` on. peak_flops_per_device: for the FLOP-utilisation estimate (None =
    looked up from the device kind; for kinds without a vendor figure, e.g. CPU, a matmul in the
    activation dtype is timed at start-up unless `measure_peak_flops` is False).
    prefetch_batches: batches put on device ahead of the running step.
  """

  profile_steps: int = 0
  profile_first_step: int = 10
  peak_flops_per_device: Optional[float] = None
  measure_peak_flops: bool = True
  prefetch_batches: int = 1


def peak_flops_per_device(device: Any, override: Optional[float] = None,
                          measure_dtype: Any = None, xla_options: Any = None) -> Optional[float]:
  """The configured peak, else the vendor figure for the device kind, else (if `measure_dtype`)
  a matmul measured now in that dtype (CPUs, unlisted accelerators), else None."""
  if override:
    return float(override)
  kind = getattr(device, "device_kind", "")
  for name, value in PEAK_FLOPS_BY_DEVICE_KIND:
    if name.lower() in kind.lower():
      return value
  if measure_dtype is None:
    return None
  peak = flops.MatmulPeak(measure_dtype, xla_options=xla_options)
  measured = peak.measure()
  logging.info("no known peak for %r: measured matmul peak %.1f GFLOP/s (%s, %d^2) for the "
               "FLOP-utilisation estimate", kind, measured / 1e9, jnp.dtype(measure_dtype).name,
               peak.size)
  return measured


class JsonlWriter(metric_writers.MetricWriter):
  """Appends `{"step": s, name: value, ...}` per `write_scalars` call to a JSON-lines file."""

  def __init__(self, path: str):
    self._path = path
    self._file = open(path, "a", encoding="utf-8")  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row = {"step": int(step)}
    row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    self._file.write(json.dumps(row) + "\n")
    self._file.flush()

  def write_summaries(self, step, values, metadata=None):
    del step, values, metadata

  def write_images(self, step, images):
    del step, images

  def write_videos(self, step, videos):
    del step, videos

  def write_audios(self, step, audios, *, sample_rate):
    del step, audios, sample_rate

  def write_texts(self, step, texts):
    del step, texts

  def write_histograms(self, step, arrays, num_buckets=None):
    del step, arrays, num_buckets

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    if not self._file.closed:
      self._file.close()


def create_writer(model_dir: str) -> metric_writers.MetricWriter:
  """TensorBoard + console on process 0 (console only elsewhere), plus metrics.jsonl on 0."""
  primary = jax.process_index() == 0
  writer = metric_writers.create_default_writer(model_dir, just_logging=not primary,
                                                asynchronous=False)
  if not primary:
    return writer
  return metric_writers.MultiWriter([writer, JsonlWriter(os.path.join(model_dir,
                                                                      "metrics.jsonl"))])


class MetricsAccumulator:
  """Sums per-step device scalars without syncing; averages them when written."""

  def __init__(self):
    self._sum = None
    self._count = 0

  def add(self, scalars: Mapping[str, jax.Array]) -> None:
    self._sum = dict(scalars) if self._sum is None else jax.tree_util.tree_map(
        jnp.add, self._sum, dict(scalars))
    self._count += 1

  def result(self) -> Mapping[str, float]:
    if not self._count:
      return {}
    host = jax.device_get(self._sum)
    out = {k: float(v) / self._count for k, v in host.items()}
    self._sum, self._count = None, 0
    return out


class Throughput:
  """steps/s, images/s, model-FLOP utilisation and ETA between two reports."""

  def __init__(self, model: Any, batch_size: int, total_steps: int,
               peak_flops: Optional[float], num_devices: int):
    self.batch_size = batch_size
    self.total_steps = total_steps
    self.flops_per_step = batch_size * flops.flops_per_example(
        model.module, getattr(model, "mask_ratio", 0.0), batch_size)["train"]
    self.peak = peak_flops * num_devices if peak_flops else None
    self._last = None

  def start(self, step: int) -> None:
    self._last = (step, time.perf_counter())

  def report(self, step: int) -> Mapping[str, float]:
    now = time.perf_counter()
    if self._last is None or step <= self._last[0]:
      self._last = (step, now)
      return {}
    steps = step - self._last[0]
    dt = max(now - self._last[1], 1e-9)
    self._last = (step, now)
    sps = steps / dt
    out = {"timing/steps_per_second": sps,
           "timing/images_per_second": sps * self.batch_size,
           "timing/seconds_per_step": dt / steps,
           "timing/eta_hours": (self.total_steps - step) / sps / 3600.0,
           "timing/tflops_per_second": sps * self.flops_per_step / 1e12}
    if self.peak:
      out["timing/mfu"] = sps * self.flops_per_step / self.peak
    return out


def device_throughput(model: Any, config: MonitoringConfig, batch_size: int,
                      total_steps: int, xla_options: Any = None) -> Throughput:
  """`Throughput` against the peak of this run's devices (timed now when unknown and asked,
  compiled with the steps' `xla_options`, so it is the peak of the matmul library they use)."""
  peak = peak_flops_per_device(
      jax.devices()[0], config.peak_flops_per_device,
      measure_dtype=(getattr(model.module, "dtype", "float32")
                     if config.measure_peak_flops else None), xla_options=xla_options)
  return Throughput(model, batch_size, total_steps, peak, jax.device_count())


def clu_hooks(writer: metric_writers.MetricWriter, config: MonitoringConfig, model_dir: str,
              start_step: int, total_steps: int, stats_period: int
              ) -> List[Callable[[int], Any]]:
  """clu's periodic actions: steps/s and uptime to the writer; the jax profiler if asked."""
  hooks = [periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                           every_steps=stats_period, every_secs=None)]
  if config.profile_steps > 0 and jax.process_index() == 0:
    hooks.append(periodic_actions.Profile(
        logdir=model_dir, num_profile_steps=config.profile_steps,
        first_profile=start_step + config.profile_first_step, every_steps=None,
        every_secs=None, profile_duration_ms=None))
  return hooks


def progress_line(total_steps: int, done: int = 0, stream: Optional[TextIO] = None,
                  min_interval_s: float = 0.5) -> progress.Progress:
  """Training's line on stderr: `step 5/10 (50%) | loss 2.5000 | 80.0 img/s | ETA 2m05s`.

  Loss, images/s and ETA are those of the latest stats report (`report_fields`, `Throughput`'s
  figures); absl logs, TensorBoard and metrics.jsonl still get every scalar.
  """
  return progress.Progress(None, total_steps, done, stream=stream, min_interval_s=min_interval_s,
                           format_done=progress.format_steps, own_figures=False)


def report_fields(report: Mapping[str, Any]) -> List[str]:
  """The progress line's figures of a stats report: loss, images/s, ETA (those it has)."""
  fields = []
  if "loss" in report:
    fields.append(f"loss {float(report['loss']):.4f}")
  if "timing/images_per_second" in report:
    fields.append(f"{float(report['timing/images_per_second']):.1f} img/s")
  if "timing/eta_hours" in report:
    fields.append(f"ETA {progress.format_duration(float(report['timing/eta_hours']) * 3600.0)}")
  return fields


class Reports:
  """What a run shows as it goes: clu's hooks every step; every `stats_period` steps (and the
  last) the metrics averaged on device, throughput and `input_counts()` to the writer; the
  progress line on process 0. `check_loss` runs before a report is written (the loop's
  non-finite check)."""

  def __init__(self, writer: metric_writers.MetricWriter, throughput: Throughput,
               hooks: Sequence[Callable[[int], Any]], stats_period: int, start_step: int,
               total_steps: int, *, check_loss: Callable[[], None],
               input_counts: Callable[[], Mapping[str, float]]):
    self.writer, self.throughput, self.hooks = writer, throughput, hooks
    self.stats_period, self.total_steps = stats_period, total_steps
    self.check_loss, self.input_counts = check_loss, input_counts
    self.metrics = MetricsAccumulator()
    self.progress = progress_line(total_steps, start_step) if jax.process_index() == 0 else None

  def start(self, step: int) -> None:
    """Throughput is measured from `step` on."""
    self.throughput.start(step)

  def step_done(self, step: int, scalars: Mapping[str, jax.Array]) -> None:
    self.metrics.add(scalars)
    for hook in self.hooks:
      hook(step)
    if step % self.stats_period == 0 or step == self.total_steps:
      self.check_loss()
      out = dict(self.metrics.result())
      out.update(self.throughput.report(step))
      out.update(self.input_counts())
      self.writer.write_scalars(step, out)
      if self.progress is not None:
        self.progress.update(1, report_fields(out))
    elif self.progress is not None:
      self.progress.update(1)

  def close(self) -> None:
    if self.progress is not None:
      self.progress.close()
