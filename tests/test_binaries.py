"""Every binary (`python -m flip_t5x.<name>`) starts in a fresh process and has a command-line test
that runs it in one.

A binary tested only inside the test process can pass there and crash for a user: whatever the test
process imported earlier (gin configurables, flags) hides what the binary itself fails to import
before `gin.finalize()`. So the command-line tests go through `test_train_helpers.run_binary` (or
another subprocess of `python -m flip_t5x.<name>`), and this file checks that none is missing.
"""
import glob
import os
import re
import subprocess
import sys

import pytest

import test_train_helpers as h

PACKAGE = os.path.join(h.ROOT, "flip_t5x")


def binaries():
  """Module names under flip_t5x/ that run as `python -m flip_t5x.<name>`."""
  found = []
  for path in sorted(glob.glob(os.path.join(PACKAGE, "*.py"))):
    with open(path, encoding="utf-8") as f:
      if re.search(r'^if __name__ == "__main__":', f.read(), re.M):
        found.append(os.path.splitext(os.path.basename(path))[0])
  return found


def test_the_binaries_are_found():
  assert {"train", "eval", "predict", "import_checkpoint", "model_info", "make_shards",
          "build_vocab", "demo_data", "benchmark"} <= set(binaries())


def test_every_binary_has_a_command_line_test_in_a_fresh_process():
  """Each binary is run as a subprocess by some test (or by scripts/demo.sh, which test_demo runs)."""
  sources = []
  for path in glob.glob(os.path.join(h.TESTS, "test_*.py")) + [
      os.path.join(h.ROOT, "scripts", "demo.sh")]:
    with open(path, encoding="utf-8") as f:
      sources.append(f.read())
  text = "\n".join(sources)
  untested = [name for name in binaries()
              if not re.search(rf'(-m[ ",]+flip_t5x\.{name}\b|run_binary\(\s*"{name}")', text)]
  assert not untested, f"binaries without a command-line test in a fresh process: {untested}"


@pytest.mark.e2e
def test_every_binary_starts_and_prints_its_help():
  """`--help` in a fresh process: imports, flag definitions and gin registration of each binary."""
  procs = {name: subprocess.Popen([sys.executable, "-m", f"flip_t5x.{name}", "--help"],
                                  cwd=h.ROOT, env=h.env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
           for name in binaries()}
  failed = {}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    # absl's --help prints the usage (the module docstring and flags) and exits with status 1.
    if proc.returncode not in (0, 1) or "Traceback" in err or "--" not in out:
      failed[name] = (proc.returncode, err[-2000:])
  assert not failed, failed
