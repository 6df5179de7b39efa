#!/usr/bin/env bash
# Installs the project into .venv (if needed) and runs the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
# The suite covers the PyTorch side too (tests/test_torch_export.py): the `torch` extra, installed
# here once per change of setup.py (scripts/demo.sh does without it). First a CPU build of torch
# where the index has one: the extra's plain `torch` would take a CUDA build (several GB).
torch_stamp=.venv/.flip_t5x_torch_installed
if [ ! -f "$torch_stamp" ] || [ setup.py -nt "$torch_stamp" ]; then
  echo "[flip_t5x] installing the torch extra into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q 'torch==2.13.0+cpu' 'torchvision==0.28.0' \
    || echo "[flip_t5x] no CPU build of torch 2.13.0 here: the torch extra's default build" >&2
  .venv/bin/python -m pip install -q -e '.[test,torch]'
  touch "$torch_stamp"
fi
exec .venv/bin/python -m pytest -q -rs -p no:cacheprovider tests "$@"
