"""flip_t5x.demo_compare (`scripts/demo.sh --compare`): the equal-time step count, and a table and
figure that are the runs' metrics, on metrics.jsonl files written here the way flip_t5x.train writes
them."""
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from flip_t5x import demo_compare
import test_train_helpers as helpers

TOP1 = "zeroshot/flip_folder_zeroshot/top1"


def _write_run(path, batch, reports, evals):
  """MODEL_DIR/metrics.jsonl: per report (step, uptime s, images/s), per eval (step, top-1 %)."""
  os.makedirs(path, exist_ok=True)
  evals = dict(evals)
  with open(os.path.join(path, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for step, uptime, rate in reports:
      f.write(json.dumps({"step": step, "steps_per_sec": rate / batch}) + "\n")
      f.write(json.dumps({"step": step, "uptime": uptime}) + "\n")
      f.write(json.dumps({"step": step, "loss": 4.0, "timing/steps_per_second": rate / batch,
                          "timing/images_per_second": rate, "learning_rate": 1e-3}) + "\n")
      if step in evals:
        f.write(json.dumps({"step": step, TOP1: evals[step],
                            "zeroshot/flip_folder_zeroshot/top5": 99.0}) + "\n")
  return path


# Masked: 300 steps of 256, six windows; the first (input warm-up, 200 img/s) is left out, so the
# rate is the median of 380, 400, 390, 410, 370 = 390 img/s; the run's wall time is 200 s.
MASKED_REPORTS = [(50, 40.0, 200.0), (100, 72.0, 380.0), (150, 104.0, 400.0),
                  (200, 136.0, 390.0), (250, 168.0, 410.0), (300, 200.0, 370.0)]
MASKED_EVALS = [(50, 20.0), (100, 35.0), (150, 44.0), (200, 52.0), (250, 58.0), (300, 62.0)]
# The tuning (batch 256): windows 100 (left out), 230, 220, 225 -> 225 img/s.
TUNED_REPORTS = [(15, 20.0, 100.0), (30, 37.0, 230.0), (45, 54.0, 220.0), (60, 71.0, 225.0)]
TUNED_EVALS = [(30, 63.5), (60, 65.0)]
# Unmasked from scratch: its eval nearest the masked run's 200 s is at 195 s (40.0), not its last.
UNMASKED_REPORTS = [(30, 45.0, 150.0), (60, 82.0, 210.0), (90, 120.0, 205.0),
                    (120, 158.0, 200.0), (150, 195.0, 215.0), (173, 230.0, 190.0)]
UNMASKED_EVALS = [(30, 12.0), (60, 18.0), (90, 25.0), (120, 31.0), (150, 40.0), (173, 43.0)]


def _run_dir(tmp_path, tuned_batch=256, tuned_rate_scale=1.0):
  run_dir = tmp_path / "demo"
  _write_run(str(run_dir / "pretrain"), 256, MASKED_REPORTS, MASKED_EVALS)
  _write_run(str(run_dir / "tuned"), tuned_batch,
             [(s, t, r * tuned_rate_scale) for s, t, r in TUNED_REPORTS], TUNED_EVALS)
  _write_run(str(run_dir / "unmasked"), 256, UNMASKED_REPORTS, UNMASKED_EVALS)
  return str(run_dir)


@pytest.mark.e2e
def test_equal_time_steps_from_the_two_throughputs(tmp_path):
  run_dir = _run_dir(tmp_path)
  masked = demo_compare.load_run(os.path.join(run_dir, "pretrain"))
  tuned = demo_compare.load_run(os.path.join(run_dir, "tuned"))
  assert (masked.steps, masked.batch_size, masked.images_per_second) == (300, 256, 390.0)
  assert tuned.images_per_second == 225.0
  # 300 x 256 / 390 = 196.9 s of masked training; at 225 img/s that is 173.08 steps of 256.
  equal = demo_compare.equal_time_steps(masked, tuned)
  assert equal == demo_compare.EqualTime(300, 390.0, 225.0, 256, 173)
  # A different unmasked batch: the same seconds at 112.5 img/s of 128 is again 173 steps.
  other = _run_dir(tmp_path / "b128", tuned_batch=128, tuned_rate_scale=0.5)
  tuned_128 = demo_compare.load_run(os.path.join(other, "tuned"))
  assert demo_compare.equal_time_steps(masked, tuned_128).unmasked_steps == 173
  # The binary prints just the count (scripts/demo.sh reads it), from pretrain and tuned alone.
  os.remove(os.path.join(run_dir, "unmasked", "metrics.jsonl"))
  proc = helpers.run_binary("demo_compare", [f"--run_dir={run_dir}", "--equal_time_steps"],
                            timeout=120, check=True)
  assert proc.stdout.strip() == "173"


def test_top1_at_is_the_nearest_evaluation():
  curve = ([10.0, 20.0, 30.0], [1.0, 2.0, 3.0])
  assert demo_compare.top1_at(curve, 24.0) == 2.0
  assert demo_compare.top1_at(curve, 25.0) == 2.0  # a tie goes to the earlier evaluation
  assert demo_compare.top1_at(curve, 99.0) == 3.0


def test_table_and_figure_are_the_runs_metrics(tmp_path):
  summary = demo_compare.compare(_run_dir(tmp_path))
  assert summary["equal_seconds"] == 200.0 and summary["equal_time"]["unmasked_steps"] == 173
  rows = summary["runs"]
  # The figure: one line per run, x = uptime at the eval's step, y = its top-1; the tuning starts
  # at the masked run's end (200 s, 62.0%) and adds its own uptime; a dotted line at 200 s.
  fig = demo_compare.figure(summary)
  (ax,) = fig.axes
  lines = ax.get_lines()
  assert len(lines) == 4
  masked_uptime = {s: t for s, t, _ in MASKED_REPORTS}
  unmasked_uptime = {s: t for s, t, _ in UNMASKED_REPORTS}
  tuned_uptime = {s: t for s, t, _ in TUNED_REPORTS}
  expected = [
      ([masked_uptime[s] for s, _ in MASKED_EVALS], [v for _, v in MASKED_EVALS]),
      ([unmasked_uptime[s] for s, _ in UNMASKED_EVALS], [v for _, v in UNMASKED_EVALS]),
      ([200.0] + [200.0 + tuned_uptime[s] for s, _ in TUNED_EVALS],
       [62.0] + [v for _, v in TUNED_EVALS]),
  ]
  for line, (xs, ys), name in zip(lines, expected, ("masked", "unmasked", "tuning")):
    assert name in line.get_label()
    np.testing.assert_allclose(line.get_xdata(), xs)
    np.testing.assert_allclose(line.get_ydata(), ys)
  np.testing.assert_allclose(lines[3].get_xdata(), [200.0, 200.0])
  # The table: run, steps, images seen, img/s, wall s, top-1 at 200 s, final.
  text = demo_compare.table(summary).splitlines()
  assert text[0].split() == ["run", "steps", "images", "img/s", "wall", "s", "top-1", "@200s",
                             "final"]
  assert text[1].split() == ["masked", "(FLIP)", "300", "76800", "390", "200", "62.0", "62.0"]
  assert text[2].split() == ["unmasked", "173", "44288", "205", "230", "40.0", "43.0"]
  assert text[3].split() == ["masked", "+", "unmasked", "tuning", "360", "92160", "225", "271",
                             "-", "65.0"]
  assert "300 masked steps at 390 img/s = 173 unmasked steps at 225 img/s" in text[4]
  assert rows["unmasked"]["images_per_second"] == 205.0  # median of 210, 205, 200, 215, 190


@pytest.mark.e2e
def test_binary_writes_the_png_and_the_json(tmp_path):
  run_dir = _run_dir(tmp_path)
  out = str(tmp_path / "docs" / "flip_vs_unmasked.png")
  proc = helpers.run_binary("demo_compare", [f"--run_dir={run_dir}", f"--output={out}"],
                            timeout=120, check=True)
  printed = json.loads(proc.stdout.strip().splitlines()[-1])
  with open(os.path.join(run_dir, "compare.json"), encoding="utf-8") as f:
    assert json.load(f) == printed
  expected = json.loads(json.dumps(demo_compare.compare(run_dir)))
  assert printed == dict(expected, png=out)
  assert "masked (FLIP)" in proc.stdout
  with Image.open(out) as im:
    assert im.format == "PNG" and im.size[0] > 500
    assert np.asarray(im.convert("L")).std() > 1.0


@pytest.mark.e2e
def test_binary_bad_input_is_one_line_exit_2(tmp_path):
  run_dir = _run_dir(tmp_path)
  os.remove(os.path.join(run_dir, "unmasked", "metrics.jsonl"))
  proc = helpers.run_binary("demo_compare", [f"--run_dir={run_dir}"], timeout=120)
  assert proc.returncode == 2, proc.stderr
  errors = [l for l in proc.stderr.splitlines() if l.startswith("flip_t5x.demo_compare: error:")]
  assert len(errors) == 1 and "unmasked/metrics.jsonl' does not exist" in errors[0], proc.stderr
  assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_demo_script_accepts_compare():
  """--compare is an option of scripts/demo.sh: only the unknown option after it is refused."""
  proc = subprocess.run(["bash", "scripts/demo.sh", "--compare", "--bogus"], cwd=helpers.ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == "demo.sh: unknown option --bogus"


@pytest.mark.parametrize("missing", ["uptime", "timing/images_per_second"])
def test_a_run_without_reports_is_a_clear_error(tmp_path, missing):
  path = tmp_path / "run"
  path.mkdir()
  record = {"step": 5, "uptime": 1.0, "timing/images_per_second": 1.0,
            "timing/steps_per_second": 1.0, TOP1: 1.0}
  del record[missing]
  (path / "metrics.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
  with pytest.raises(demo_compare.MetricsError, match=f"no '{missing}' records"):
    demo_compare.load_run(str(path))


def test_an_evaluation_without_wall_time_is_a_clear_error(tmp_path):
  """A zero-shot record at a step with no uptime report cannot be placed on the time axis."""
  path = _write_run(str(tmp_path / "run"), 256, [(5, 1.0, 100.0), (10, 2.0, 100.0)], [])
  with open(os.path.join(path, "metrics.jsonl"), "a", encoding="utf-8") as f:
    f.write(json.dumps({"step": 7, TOP1: 30.0}) + "\n")
  with pytest.raises(demo_compare.MetricsError, match="no zero-shot evaluation at a step with"):
    demo_compare.load_run(path).top1  # pylint: disable=expression-not-assigned
