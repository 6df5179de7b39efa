"""flip_t5x.plot: the curves it draws are the runs' metrics.jsonl, and bad input says so."""
import json
import os

import numpy as np
from PIL import Image
import pytest

from flip_t5x import plot
import test_train_helpers as helpers


def _write_run(path: str, losses, top1, images_per_second, uptimes, extra_lines=()) -> str:
  """A metrics.jsonl shaped like flip_t5x.train's: uptime, train scalars, zero-shot records."""
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for i, (loss, acc, ips, t) in enumerate(zip(losses, top1, images_per_second, uptimes)):
      step = 10 * (i + 1)
      f.write(json.dumps({"step": step, "uptime": t}) + "\n")
      f.write(json.dumps({"step": step, "loss": loss, "timing/images_per_second": ips,
                          "learning_rate": 0.1}) + "\n")
      f.write(json.dumps({"step": step, "zeroshot/toy/top1": acc, "zeroshot/toy/top5": 99.0})
              + "\n")
    for line in extra_lines:
      f.write(line + "\n")
  return path


def _runs(tmp_path):
  a = _write_run(str(tmp_path / "run_a"), [5.0, 4.0, 3.5], [10.0, 20.0, 30.0],
                 [100.0, 120.0, 130.0], [1.5, 3.0, 4.5])
  b = _write_run(str(tmp_path / "run_b"), [6.0, 5.5], [5.0, 7.0], [50.0, 60.0], [2.0, 9.0],
                 extra_lines=["{not json", "[1, 2]", ""])
  return a, b


def test_series_reads_the_runs_metrics(tmp_path):
  a, b = _runs(tmp_path)
  sa = plot.series(a)
  assert sa["loss"] == ([10, 20, 30], [5.0, 4.0, 3.5])
  assert sa["zeroshot/toy/top1"] == ([10, 20, 30], [10.0, 20.0, 30.0])
  assert sa["timing/images_per_second"] == ([10, 20, 30], [100.0, 120.0, 130.0])
  assert "zeroshot/toy/top5" not in sa and "learning_rate" not in sa
  assert plot.wall_time(sa, "loss") == ([1.5, 3.0, 4.5], [5.0, 4.0, 3.5])
  records, skipped = plot.read_records(b)
  assert (len(records), skipped) == (6, 2)  # two corrupt lines counted, the blank one ignored
  assert plot.series(b)["loss"] == ([10, 20], [6.0, 5.5])


def test_figure_lines_are_the_series(tmp_path):
  a, b = _runs(tmp_path)
  fig = plot.figure([a, b])
  axes = fig.axes
  assert len(axes) == 6  # (step, wall time) x (loss, top-1, images/s)
  for ax_index, key, x_of in [(0, "loss", None), (1, "zeroshot/toy/top1", None),
                              (2, "timing/images_per_second", None), (3, "loss", "time"),
                              (5, "timing/images_per_second", "time")]:
    lines = axes[ax_index].get_lines()
    assert len(lines) == 2, (ax_index, [line.get_label() for line in lines])
    for line, run in zip(lines, (a, b)):
      assert line.get_label().startswith(run)
      s = plot.series(run)
      xs, ys = plot.wall_time(s, key) if x_of else s[key]
      np.testing.assert_allclose(line.get_xdata(), xs)
      np.testing.assert_allclose(line.get_ydata(), ys)


@pytest.mark.e2e
def test_binary_writes_a_png_and_counts_skipped_lines(tmp_path):
  a, b = _runs(tmp_path)
  out = str(tmp_path / "plots" / "curves.png")
  proc = helpers.run_binary("plot", [a, b, f"--output={out}"], timeout=120, check=True)
  assert proc.stdout.strip().splitlines()[-1] == out
  assert "skipped 2 unreadable line(s)" in proc.stderr and "run_b" in proc.stderr
  with Image.open(out) as im:
    im.verify()
  with Image.open(out) as im:
    assert im.format == "PNG" and im.size[0] > 500 and im.size[1] > 500
    pixels = np.asarray(im.convert("L"))
  assert pixels.std() > 1.0  # something was drawn


@pytest.mark.e2e
def test_binary_bad_input_is_one_line_exit_2(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "metrics.jsonl").write_text("{broken\n", encoding="utf-8")
  for args, expected in [([str(tmp_path / "missing")], "is not a directory"),
                         ([str(tmp_path)], "metrics.jsonl' does not exist"),
                         ([str(empty)], "has no metrics records"),
                         ([], "give at least one MODEL_DIR")]:
    proc = helpers.run_binary("plot", args, timeout=120)
    assert proc.returncode == 2, (args, proc.stderr)
    lines = [l for l in proc.stderr.splitlines() if l.startswith("flip_t5x.plot: error:")]
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
