"""FLIP's released checkpoints by name: download once, import once, reuse.

    from flip_t5x import pretrained
    found = pretrained.resolve("flip_vit_l16_laion2b")   # or a path to the downloaded .zip
    found.checkpoint, found.gin_file                       # checkpoint_<step> dir, model gin file
    print(pretrained.list_models())

The first use downloads the release archive (`download.fetch`: http(s) with a progress line and
resume, gs://, or a local path used in place), extracts it (`archive.extract`, refusing members
that would land outside its folder), finds the t5x msgpack checkpoint wherever it lies, and
imports it (`checkpoints.importer`, as `flip_t5x.import_checkpoint` does) into the
cache in this project's checkpoint format (t5x's orbax layout). Later uses read that import and
touch neither network nor archive.
The released models use FLIP's BERT vocabulary, the default `VOCAB_FILE`. Cache layout, under
`cache_dir` (default `$XDG_CACHE_HOME/flip_t5x`, else `~/.cache/flip_t5x`):

    downloads/<archive>        the archive; <archive>.json its URL, size and sha256
    models/<name>/             the import: checkpoint_<step>/ and source.json (archive sha256)
    locks/<name>.lock          held (flock) by the process fetching and importing <name>

Each of them appears by an atomic rename once complete, so an interrupted download, extraction
or import leaves only `*.part` / `*.tmp-*` entries that no later run trusts. A second process
asking for a model that another is fetching or importing says so, waits for its lock, then
reuses its import. An archive whose members would expand past a limit (`archive.extract`) is
refused before anything is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import sys
import urllib.parse
import uuid
from typing import Dict, Iterator, List, Optional, TextIO

import gin

from flip_t5x import checkpoints
from flip_t5x.checkpoints import importer
from flip_t5x.pretrained import archive
from flip_t5x.pretrained import download
from flip_t5x.runtime import gin_utils

SOURCE_FILE = "source.json"


class PretrainedError(ValueError):
  """An unknown model name, or an archive that is not a known release."""


# What `resolve` raises for bad input (a bad name, a failed download, a refused archive or
# release): binaries declare these to `gin_utils.run` (one line, exit status 2).
RESOLVE_ERRORS = (PretrainedError, download.DownloadError, archive.ArchiveError,
                  *checkpoints.READ_ERRORS)


@dataclasses.dataclass(frozen=True)
class PretrainedModel:
  """One released checkpoint: where it is, which model gin file reads it, what it scores."""

  name: str
  url: str  # http(s)://, gs://, or a local path
  gin_file: str  # relative to the project root (gin_configs/...), or absolute
  description: str = ""
  zeroshot_in1k: Optional[float] = None  # top-1 as released
  paper_zeroshot_in1k: Optional[float] = None  # the paper's figure, when it differs
  sha256: Optional[str] = None  # pins the archive, when known

  @property
  def archive_name(self) -> str:
    return os.path.basename(urllib.parse.urlparse(self.url).path)


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A ready model: a checkpoint directory any flip_t5x loader reads, and its model gin file."""

  name: str
  checkpoint: str
  gin_file: str


# From github.com/facebookresearch/flip README.md: "The released ViT-L/16 and ViT-H/14 models were
# trained on LAION datasets where faces were blurred ..., resulting in a slight performance drop by
# 0.2-0.3% to achieve accuracies of 76.4% and 78.5%" (the paper's table: 76.6 and 78.8).
_REGISTRY: Dict[str, PretrainedModel] = {}


def register(model: PretrainedModel, overwrite: bool = False) -> PretrainedModel:
  """Adds `model` under `model.name` (e.g. a mirror of a release, or your own archive)."""
  if model.name in _REGISTRY and not overwrite:
    raise PretrainedError(f"a pretrained model named {model.name!r} is already registered")
  _REGISTRY[model.name] = model
  return model


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


register(PretrainedModel(
    "flip_vit_l16_laion2b", "https://dl.fbaipublicfiles.com/flip/flip_large16_laion2b_v2.zip",
    "gin_configs/models/flip_vit_l16.gin", "ViT-L/16, LAION-2B, 25.6B sampled, faces blurred",
    zeroshot_in1k=76.4, paper_zeroshot_in1k=76.6))
register(PretrainedModel(
    "flip_vit_h14_laion2b", "https://dl.fbaipublicfiles.com/flip/flip_huge14_laion2b_v2.zip",
    "gin_configs/models/flip_vit_h14.gin", "ViT-H/14, LAION-2B, 25.6B sampled, faces blurred",
    zeroshot_in1k=78.5, paper_zeroshot_in1k=78.8))


def names() -> List[str]:
  return sorted(_REGISTRY)


def get(name: str) -> PretrainedModel:
  if name not in _REGISTRY:
    raise PretrainedError(f"unknown pretrained model {name!r}; known: {', '.join(names())}")
  return _REGISTRY[name]


def default_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "flip_t5x")


def gin_file_path(model: PretrainedModel) -> str:
  return model.gin_file if os.path.isabs(model.gin_file) else os.path.join(
      gin_utils.PROJECT_ROOT, model.gin_file)


# ------------------------------------------------------------------------------------------------
def _cached_import(model_dir: str, sha256: Optional[str]) -> Optional[str]:
  """The imported checkpoint in `model_dir`, if complete and (when pinned) from that archive."""
  try:
    with open(os.path.join(model_dir, SOURCE_FILE)) as f:
      source = json.load(f)
  except (OSError, ValueError):
    return None
  if sha256 is not None and source.get("sha256") != sha256.lower():
    return None
  path = os.path.join(model_dir, source.get("checkpoint", ""))
  return path if os.path.isdir(path) else None


def _model(gin_file: str):
  """The model the gin file binds to MODEL (clears the process's gin configuration)."""
  gin.clear_config()
  try:
    return gin_utils.parse_gin_flags_for_model([], [gin_file], [], finalize_config=False)
  finally:
    gin.clear_config()


@contextlib.contextmanager
def _model_lock(cache_dir: str, name: str, stream: Optional[TextIO]) -> Iterator[None]:
  """Holds `locks/<name>.lock` (an OS lock: a process that dies lets go of it); says if it waits."""
  locks = os.path.join(cache_dir, "locks")
  os.makedirs(locks, exist_ok=True)
  path = os.path.join(locks, f"{name}.lock")
  with open(path, "a") as f:  # never deleted: a lock file removed while held locks nothing
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process fetching or importing {name} (it holds {path})",
            file=stream or sys.stderr, flush=True)
      fcntl.flock(f, fcntl.LOCK_EX)
    yield  # closing the file releases the lock


def _import_archive(path: str, sha256: str, url: str, gin_file: str, model_dir: str,
                    max_extract_bytes: Optional[int]) -> None:
  """Extracts the archive, imports its checkpoint, and renames the result to `model_dir`."""
  work = os.path.join(os.path.dirname(model_dir), f".tmp-{uuid.uuid4().hex[:8]}")
  os.makedirs(work)
  try:
    root = archive.extract(path, os.path.join(work, "extracted"), max_extract_bytes)
    ckpt_dir = archive.find_t5x_checkpoint(root)
    out = os.path.join(work, "model")
    _, step = importer.import_checkpoint(ckpt_dir, _model(gin_file), out, official_only=True)
    download.write_json_atomic(os.path.join(out, SOURCE_FILE), {
        "url": url, "sha256": sha256, "checkpoint": f"checkpoint_{step}",
        "archive_path": os.path.relpath(ckpt_dir, root)})
    if _cached_import(model_dir, sha256) is not None:
      return  # finished meanwhile (a cache where flock locks nothing): keep what others may read
    if os.path.isdir(model_dir):  # an older import (another archive): put aside, then replace
      os.rename(model_dir, os.path.join(work, "old"))
    os.rename(out, model_dir)
  finally:
    shutil.rmtree(work, ignore_errors=True)


def _entry_for(name_or_path: str) -> PretrainedModel:
  """The registered model by name, or the one whose archive file name `name_or_path` ends in."""
  if name_or_path in _REGISTRY:
    return _REGISTRY[name_or_path]
  base = os.path.basename(urllib.parse.urlparse(name_or_path).path)
  for model in _REGISTRY.values():
    if base and base == model.archive_name:
      return model
  raise PretrainedError(
      f"{name_or_path!r} is neither a pretrained model name ({', '.join(names())}) nor one of "
      f"their archives ({', '.join(_REGISTRY[n].archive_name for n in names())}); "
      "pretrained.register() adds your own")


def resolve(name_or_path: str, cache_dir: Optional[str] = None, sha256: Optional[str] = None,
            stream: Optional[TextIO] = None, max_extract_bytes: Optional[int] = None) -> Resolved:
  """The imported checkpoint and model gin file of a released model, fetched on first use.

  `name_or_path`: a registered name (`list_models()`), or the path / URL of its archive under the
  release's file name (offline machines: an archive downloaded elsewhere). `sha256` pins the
  archive (default: the registry's pin). Progress goes to `stream` (stderr). `max_extract_bytes`
  bounds what the archive may expand to (default: `archive.default_max_bytes`).

  Raises:
    RESOLVE_ERRORS: PretrainedError, download.DownloadError, archive.ArchiveError, and the
    importer's errors.
  """
  model = _entry_for(name_or_path)
  source = model.url if name_or_path == model.name else name_or_path
  pin = sha256 or model.sha256
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  model_dir = os.path.join(cache_dir, "models", model.name)
  gin_file = gin_file_path(model)
  checkpoint = _cached_import(model_dir, pin)
  if checkpoint is None:
    with _model_lock(cache_dir, model.name, stream):
      checkpoint = _cached_import(model_dir, pin)  # imported while this process waited?
      if checkpoint is None:
        path, actual = download.fetch(source, os.path.join(cache_dir, "downloads"), pin, stream)
        print(f"importing {path} -> {model_dir}", file=stream or sys.stderr, flush=True)
        _import_archive(path, actual, source, gin_file, model_dir, max_extract_bytes)
        checkpoint = _cached_import(model_dir, pin)
  return Resolved(model.name, checkpoint, gin_file)


def list_models(cache_dir: Optional[str] = None) -> str:
  """The registry as a table: name, model, zero-shot ImageNet-1K, cached or not, gin file, URL."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  rows = [("name", "model", "IN-1K 0-shot (paper)", "cached", "gin file", "archive")]
  for name in names():
    m = _REGISTRY[name]
    score = "-" if m.zeroshot_in1k is None else f"{m.zeroshot_in1k:.1f}"
    if m.paper_zeroshot_in1k is not None:
      score += f" ({m.paper_zeroshot_in1k:.1f})"
    cached = _cached_import(os.path.join(cache_dir, "models", name), None) is not None
    rows.append((name, m.description, score, "yes" if cached else "no", m.gin_file, m.url))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
