"""Gin command-line plumbing shared by the binaries, with t5x's flags and `--gin.X=V` syntax.

Gin files include each other by paths relative to a search path, as t5x's do
(`include 'gin_configs/models/flip_vit_l16.gin'`); the project root is always searched, so the
binaries work from any working directory.
"""
from __future__ import annotations

import os
from typing import Callable, List, Sequence

from absl import app
from absl import flags
from absl import logging
import gin

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def define_gin_flags() -> None:
  """The gin flags of t5x's binaries (call once, at module level of a binary)."""
  flags.DEFINE_multi_string("gin_file", default=[], help="Gin files, parsed in order.")
  flags.DEFINE_multi_string("gin_bindings", default=[], help="Individual gin bindings.")
  flags.DEFINE_list("gin_search_paths", default=["."], help="Where to look for gin files.")


class GinConfigError(ValueError):
  """A gin file or binding that cannot be applied; the message names it."""


def rewrite_gin_args(args: Sequence[str]) -> List[str]:
  """Rewrites `--gin.NAME=VALUE` to `--gin_bindings=NAME = VALUE` (t5x's syntax)."""
  out = []
  for arg in args:
    if arg.startswith("--gin."):
      if "=" not in arg:
        raise GinConfigError(f"gin bindings must look like --gin.NAME=VALUE, got {arg!r}")
      name, value = arg[len("--gin."):].split("=", 1)
      arg = f"--gin_bindings={name} = {value}"
    out.append(arg)
  return out


def search_paths(user_paths: Sequence[str]) -> List[str]:
  paths = list(user_paths)
  if os.path.isdir(os.path.join(PROJECT_ROOT, "gin_configs")) and PROJECT_ROOT not in paths:
    paths.append(PROJECT_ROOT)
  return paths


def parse_gin_flags(gin_search_paths: Sequence[str], gin_files: Sequence[str],
                    gin_bindings: Sequence[str], finalize_config: bool = True) -> None:
  """Parses files then bindings; any failure becomes a `GinConfigError` naming what failed."""
  for path in search_paths(gin_search_paths):
    gin.add_config_file_search_path(path)
  if not gin_files:
    raise GinConfigError("no --gin_file given: pass at least one gin file (e.g. "
                         "--gin_file=gin_configs/flip_vit_b16.gin)")
  for gin_file in gin_files:
    try:
      gin.parse_config_file(gin_file)
    except (IOError, OSError) as e:
      raise GinConfigError(f"cannot read gin file {gin_file!r}: {e}") from e
    except Exception as e:  # gin raises many types; all name the file/line in their text
      raise GinConfigError(f"in gin file {gin_file!r}: {e}") from e
  for binding in gin_bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:
      raise GinConfigError(f"in gin binding {binding!r}: {e}") from e
  if finalize_config:
    gin.finalize()
  logging.info("Gin configuration:\n%s", gin.config_str())


def run(main: Callable[[Sequence[str]], None]) -> None:
  """`app.run` with t5x's `--gin.NAME=VALUE` rewriting."""
  app.run(main, flags_parser=lambda argv: app.parse_flags_with_usage(rewrite_gin_args(argv)))
