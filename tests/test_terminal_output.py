"""What a user sees in the terminal: a progress line, and no TensorFlow/CUDA start-up notices."""
import io
import re
import subprocess

import pytest

from flip_t5x import _quiet
from flip_t5x import progress as progress_lib
from flip_t5x.runtime import monitoring
import test_train_helpers as helpers

# Printed by TensorFlow/XLA C++ code while it loads (this machine: oneDNN, no CUDA driver).
START_UP_NOISE = re.compile(r"oneDNN custom operations|Could not find cuda drivers|cuInit|"
                            r"absl::InitializeLog|cpu_feature_guard|cudart_stub")
PROGRESS = re.compile(r"^step (\d+)/(\d+) \(\d+%\) \| loss [\d.]+ \| [\d.]+ img/s \| ETA \S+$",
                      re.M)


class _Terminal(io.StringIO):
  def isatty(self) -> bool:
    return True


def test_quiet_level_follows_verbose_and_the_users_setting():
  assert _quiet.min_log_level([], {}) == _quiet.QUIET_LEVEL
  assert _quiet.min_log_level(["--gin.X=1", "--verbose"], {}) is None
  assert _quiet.min_log_level(["--verbose", "--noverbose"], {}) == _quiet.QUIET_LEVEL
  assert _quiet.min_log_level([], {"TF_CPP_MIN_LOG_LEVEL": "0"}) is None
  assert _quiet.silence_import([], {}) and _quiet.silence_import([], {"TF_CPP_MIN_LOG_LEVEL": "3"})
  assert not _quiet.silence_import([], {"TF_CPP_MIN_LOG_LEVEL": "0"})
  assert not _quiet.silence_import(["--verbose"], {})


def test_progress_line_plain_when_not_a_terminal():
  out = io.StringIO()
  line = monitoring.progress_line(10, stream=out)
  line.update(1)  # no report yet: nothing in a log
  line.update(4, monitoring.report_fields({"loss": 2.5, "timing/images_per_second": 80.0,
                                           "timing/eta_hours": 125 / 3600, "grad_norm": 1.0}))
  line.close()
  assert out.getvalue() == "step 5/10 (50%) | loss 2.5000 | 80.0 img/s | ETA 2m05s\n"


def test_progress_line_rewritten_in_place_on_a_terminal():
  out = _Terminal()
  line = monitoring.progress_line(4, stream=out, min_interval_s=0.0)
  line.update(1)
  line.update(1, monitoring.report_fields({"loss": 3.0, "timing/images_per_second": 10.0,
                                           "timing/eta_hours": 1.05}))
  line.close()
  text = out.getvalue()
  assert text.count("\n") == 1 and text.endswith("step 2/4 (50%) | loss 3.0000 | 10.0 img/s | "
                                                 "ETA 1h03m\n")
  assert "\r\033[Kstep 1/4 (25%)\r" in text


@pytest.mark.e2e
def test_train_binary_shows_progress_and_no_start_up_noise(tmp_path):
  """A real run as a user starts it: no TF_CPP_MIN_LOG_LEVEL in the environment, no --verbose."""
  env = helpers.env()
  del env["TF_CPP_MIN_LOG_LEVEL"]
  steps = 4
  proc = subprocess.run(
      helpers.train_args(str(tmp_path / "run"), steps, ["--gin.train_script.train.stats_period=2"]),
      cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-6000:]
  progress = PROGRESS.findall(proc.stderr)
  assert [(int(a), int(b)) for a, b in progress] == [(2, steps), (4, steps)], proc.stderr[-3000:]
  assert "\r" not in proc.stderr  # not a terminal: plain lines only
  assert not START_UP_NOISE.search(proc.stderr), START_UP_NOISE.search(proc.stderr).group(0)
  assert "training steps 0..4" in proc.stderr  # absl logs still reach stderr


def test_job_progress_in_tenths_in_a_log_and_in_place_on_a_terminal():
  """Downloads and shard writing: done / total, rate and ETA; a log gets one line per tenth."""
  out = io.StringIO()
  bar = progress_lib.Progress("download x.zip", total=100, format_value=progress_lib.format_bytes,
                              stream=out)
  for _ in range(41):
    bar.update(1)
  bar.close()
  lines = out.getvalue().splitlines()
  assert [l.split(" | ")[1] for l in lines] == [
      "1 B / 100 B (1%)", "10 B / 100 B (10%)", "20 B / 100 B (20%)", "30 B / 100 B (30%)",
      "40 B / 100 B (40%)", "41 B / 100 B (41%)"]  # close: the last figures, not a repeat
  done = io.StringIO()
  bar = progress_lib.Progress("x", total=10, stream=done)
  bar.update(10)
  bar.close()
  assert len(done.getvalue().splitlines()) == 1  # 100% is written once
  assert all(re.fullmatch(r"download x\.zip \| .* \| [\d.]+ \S*B/s \| ETA \S+", l) for l in lines)

  tty = _Terminal()
  bar = progress_lib.Progress("writing shards to /out", stream=tty, min_interval_s=0.0,
                              format_value=progress_lib.format_count("inputs"))
  bar.update(1234)
  bar.close()
  assert tty.getvalue().count("\n") == 1 and "\r\033[Kwriting shards to /out | 1,234 inputs" in (
      tty.getvalue())
  assert "ETA" not in tty.getvalue()  # no total, no ETA
  assert progress_lib.format_duration(3725) == "1h02m" and progress_lib.format_bytes(3 << 20) == (
      "3.0 MiB")
