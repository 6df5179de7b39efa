"""Progress on the terminal: done / total, rate, ETA, and figures of the caller's own.

One line for every long job: downloads and shard writing (`label | done / total (percent) |
rate/s | ETA`), evaluation (images done, images/s) and training (`step 5/10 (50%) | loss 2.5000 |
80.0 img/s | ETA 2m05s`: the figures of the trainer's latest report, which it passes as `fields`).
On a terminal the line is rewritten in place (`\r`, the cursor left at column 0 so a log line that
follows overwrites it); elsewhere (a log file, a pipe) a plain line is written at each tenth of
the total (every `log_every_s` when the total is unknown; at each report when the caller brings
its own figures) and at the end, so logs stay short.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, Sequence, TextIO


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


def _percent(done: float, total: float) -> str:
  return f"({100.0 * done / max(total, 1):.0f}%)"


def format_steps(done: int, total: Optional[int]) -> str:
  """`step 5/10 (50%)`: where a training run is."""
  return f"step {done}/{total} {_percent(done, total)}" if total else f"step {done}"


class Progress:
  """`label | done / total (percent) | rate/s | ETA | fields...` on `stream` (stderr).

  `format_value` writes counts and the rate (`format_bytes`, `format_count("images")`);
  `format_done(done, total)` replaces the whole `done / total (percent)` part (`format_steps`), and
  a `label` of None leaves the label out. `fields` passed to `update` (preformatted, e.g.
  `loss 2.5000`) follow on the line until the next ones. With `own_figures=False` they are the only
  figures (training's: the rate and ETA of its reports, not of this line's updates), and a log gets
  a line per update that brings them instead of one per tenth.
  """

  def __init__(self, label: Optional[str], total: Optional[int] = None, done: int = 0,
               format_value: Callable[[float], str] = format_count(""),
               stream: Optional[TextIO] = None, min_interval_s: float = 0.2,
               log_every_s: float = 10.0,
               format_done: Optional[Callable[[int, Optional[int]], str]] = None,
               own_figures: bool = True):
    self.label, self.total, self.done = label, total, done
    self.format_value = format_value
    self.format_done = format_done or self._done_of_total
    self.own_figures = own_figures
    self.fields: Sequence[str] = ()
    self.stream = sys.stderr if stream is None else stream
    self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self.min_interval_s = min_interval_s
    self.log_every_s = log_every_s
    self._start_done, self._start = done, time.monotonic()
    self._last_write = self._start if not self.is_tty else -float("inf")
    self._last_tenth = -1
    self._written_at = None  # `done` when a plain line was last written

  def _done_of_total(self, done: int, total: Optional[int]) -> str:
    if not total:
      return self.format_value(done)
    return (f"{self.format_value(done)} / {self.format_value(total)} "
            f"{_percent(done, total)}")

  @property
  def seconds(self) -> float:
    """Seconds since this line started."""
    return time.monotonic() - self._start

  @property
  def rate(self) -> float:
    """Units done per second since this line started."""
    return (self.done - self._start_done) / max(self.seconds, 1e-9)

  def text(self) -> str:
    parts = [] if self.label is None else [self.label]
    parts.append(self.format_done(self.done, self.total))
    if self.own_figures:
      rate = self.rate
      parts.append(f"{self.format_value(rate)}/s")
      if self.total and rate > 0:
        parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
    parts.extend(self.fields)
    return " | ".join(parts)

  def update(self, n: int = 1, fields: Optional[Sequence[str]] = None) -> None:
    """`n` more units done; `fields`, when given, replace the caller's figures on the line."""
    self.done += n
    if fields is not None:
      self.fields = list(fields)
    now = time.monotonic()
    if self.is_tty:
      recent = now - self._last_write < self.min_interval_s
      if recent and fields is None and self.done != self.total:
        return
      self.stream.write(f"\r\033[K{self.text()}\r")
    elif not self.own_figures:
      if fields is None:
        return
      self.stream.write(self.text() + "\n")
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
