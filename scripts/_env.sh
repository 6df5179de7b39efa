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
# XLA's CPU train step takes multi-GiB scratch buffers every step; glibc hands them back to the OS
# and page-faults them in again (~15% of a step, measured by flip_t5x.benchmark). jemalloc with
# decay off keeps them, and lg_extent_max_active_fit:20 lets a freed extent serve any smaller
# request (jemalloc's default, 64x at most, left XLA:CPU with Eigen matmuls mapping fresh memory:
# 80,000-130,000 page faults and 1.3-2 s of system time per step at mask 0). Preloaded when
# Debian's libjemalloc2 is installed; FLIP_ALLOCATOR=system turns it off.
if [ "${FLIP_ALLOCATOR:-jemalloc}" = "jemalloc" ] && [[ "${LD_PRELOAD:-}" != *jemalloc* ]]; then
  for lib in /usr/lib/x86_64-linux-gnu/libjemalloc.so.2 /usr/lib/aarch64-linux-gnu/libjemalloc.so.2 \
             /usr/lib64/libjemalloc.so.2; do
    if [ -r "$lib" ]; then
      export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
      export MALLOC_CONF="${MALLOC_CONF:-oversize_threshold:0,dirty_decay_ms:-1,muzzy_decay_ms:-1,lg_extent_max_active_fit:20}"
      break
    fi
  done
fi
