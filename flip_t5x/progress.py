"""Progress of a long job on the terminal (downloads, shard writing): done / total, rate, ETA.

On a terminal one line is rewritten in place (`\r`); elsewhere (a log file, a pipe) a plain line
is written at each tenth of the total (every `log_every_s` when the total is unknown) and at the
end, so logs stay short. Training has its own line (`runtime.monitoring.ProgressLine`), fed by
the trainer's reports.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO


def format_duration(seconds: float) -> str:
  """`1h02m`, `3m05s` or `42s`: an ETA a person reads at a glance."""
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def format_bytes(n: float) -> str:
  """`512 B`, `1.5 MiB`, `3.2 GiB`."""
  for unit in ("B", "KiB", "MiB", "GiB"):
    if abs(n) < 1024 or unit == "GiB":
      return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
    n /= 1024.0
  return f"{n:.1f} GiB"


def format_count(unit: str) -> Callable[[float], str]:
  """A formatter of counts: `format_count("examples")(12345)` is `12,345 examples`."""
  return lambda n: f"{n:,.0f} {unit}".rstrip()


class Progress:
  """`label | done / total (percent) | rate/s | ETA` on `stream` (stderr), as work is done."""

  def __init__(self, label: str, total: Optional[int] = None, done: int = 0,
               format_value: Callable[[float], str] = format_count(""),
               stream: Optional[TextIO] = None, min_interval_s: float = 0.2,
               log_every_s: float = 10.0):
    self.label, self.total, self.done = label, total, done
    self.format_value = format_value
    self.stream = sys.stderr if stream is None else stream
    self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.min_interval_s = min_interval_s
    self.log_every_s = log_every_s
    self._start_done, self._start = done, time.monotonic()
    self._last_write = self._start if not self.is_tty else -float("inf")
    self._last_tenth = -1
    self._written_at = None  # `done` when a plain line was last written

  def text(self) -> str:
    elapsed = max(time.monotonic() - self._start, 1e-9)
    rate = (self.done - self._start_done) / elapsed
    parts = [self.label]
    if self.total:
      parts.append(f"{self.format_value(self.done)} / {self.format_value(self.total)} "
                   f"({100.0 * self.done / self.total:.0f}%)")
    else:
      parts.append(self.format_value(self.done))
    parts.append(f"{self.format_value(rate)}/s")
    if self.total and rate > 0:
      parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
    return " | ".join(parts)

  def update(self, n: int = 1) -> None:
    """`n` more units done."""
    self.done += n
    now = time.monotonic()
    if self.is_tty:
      if now - self._last_write < self.min_interval_s:
        return
      self.stream.write(f"\r\033[K{self.text()}")
    elif self.total:
      tenth = int(10 * self.done / self.total)
      if tenth <= self._last_tenth:
        return
      self._last_tenth = tenth
      self.stream.write(self.text() + "\n")
    else:
      if now - self._last_write < self.log_every_s:
        return
      self.stream.write(self.text() + "\n")
    self.stream.flush()
    self._last_write, self._written_at = now, self.done

  def close(self) -> None:
    """The final figures, on their own line (in a log, unless the last line already had them)."""
    if self.is_tty:
      self.stream.write(f"\r\033[K{self.text()}\n")
    elif self._written_at != self.done:
      self.stream.write(self.text() + "\n")
    self.stream.flush()
