"""The `--pretrained` flags that `flip_t5x.predict` and `flip_t5x.eval` share.

`--pretrained=NAME` (or the path of a downloaded release archive) stands for a checkpoint and its
model gin file; `--pretrained=list` prints the registry and exits.
"""
from __future__ import annotations

import sys
from typing import Optional

from absl import flags

from flip_t5x import pretrained

FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("pretrained", None, "A released model by name, or the path of its "
                      "downloaded archive; 'list' prints the names. Downloaded and imported into "
                      "the cache on first use.")
  flags.DEFINE_string("pretrained_cache_dir", None, "Where released models are downloaded and "
                      "imported (default: $XDG_CACHE_HOME/flip_t5x, else ~/.cache/flip_t5x).")
  flags.DEFINE_string("sha256", None, "Pins the sha256 of the --pretrained archive.")


def list_if_asked() -> None:
  """`--pretrained=list`: prints the registry (and what is cached) and exits 0."""
  if FLAGS.pretrained == "list":
    print(pretrained.list_models(FLAGS.pretrained_cache_dir), flush=True)
    sys.exit(0)


def resolve_from_flags() -> Optional[pretrained.Resolved]:
  """The model `--pretrained` names (None without it), fetched and imported on first use.

  A bad name, a failed download or a refused archive raises one of `pretrained.RESOLVE_ERRORS`.
  """
  list_if_asked()
  if not FLAGS.pretrained:
    return None
  return pretrained.resolve(FLAGS.pretrained, FLAGS.pretrained_cache_dir, FLAGS.sha256)
