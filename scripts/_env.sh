# Sourced by the scripts: create or reuse .venv and install the project into it (quietly).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "[flip_t5x] creating .venv" >&2
  "$PYTHON" -m venv .venv
fi
# Reinstall only when setup.py changed since the last install.
stamp=.venv/.flip_t5x_installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  echo "[flip_t5x] installing dependencies into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
