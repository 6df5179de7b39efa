"""Silences TensorFlow/XLA's C++ start-up notices before anything imports TensorFlow.

Imported first by the binaries (`from flip_t5x import _quiet` above every other import): the
oneDNN notice, "Could not find cuda drivers", `cuInit` failures and "All log messages before
absl::InitializeLog()" are printed by C++ code as TensorFlow/jaxlib load, so the level must be in
the environment before that. TensorFlow 2.21 prints its import-time notices whatever
TF_CPP_MIN_LOG_LEVEL says (its C++ logging starts before it reads the variable), so TensorFlow is
also imported here with file descriptor 2 pointed at /dev/null; an import error still raises, and
its traceback prints once stderr is back. `--verbose` on the command line, or
TF_CPP_MIN_LOG_LEVEL=0 set by the user, keeps all of them; a level the user set is never changed.
Python-side logging (absl INFO lines, errors, tracebacks) is untouched.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Mapping, Optional, Sequence

QUIET_LEVEL = "3"  # C++ INFO, WARNING and ERROR notices of TensorFlow/XLA off


def verbose_requested(argv: Sequence[str]) -> bool:
  """Whether argv asks for `--verbose` (absl boolean flag syntax; the last one wins)."""
  verbose = False
  for arg in argv:
    if arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1"):
      verbose = True
    elif arg in ("--noverbose", "--verbose=false", "--verbose=False", "--verbose=0"):
      verbose = False
  return verbose


def min_log_level(argv: Sequence[str], environ: Mapping[str, str]) -> Optional[str]:
  """The TF_CPP_MIN_LOG_LEVEL to set, or None to leave the environment as it is."""
  if "TF_CPP_MIN_LOG_LEVEL" in environ or verbose_requested(argv):
    return None
  return QUIET_LEVEL


def silence_import(argv: Sequence[str], environ: Mapping[str, str]) -> bool:
  """Whether to hide TensorFlow's import-time notices: yes unless asked for (INFO = level 0)."""
  return not verbose_requested(argv) and environ.get("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL) != "0"


@contextlib.contextmanager
def stderr_fd_silenced():
  """Points file descriptor 2 (where C++ code writes) at /dev/null for the block."""
  sys.stderr.flush()
  saved = os.dup(2)
  try:
    with open(os.devnull, "w", encoding="utf-8") as devnull:
      os.dup2(devnull.fileno(), 2)
      try:
        yield
      finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
  finally:
    os.close(saved)


_level = min_log_level(sys.argv[1:], os.environ)
if _level is not None:
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = _level
if silence_import(sys.argv[1:], os.environ):
  with stderr_fd_silenced():
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
