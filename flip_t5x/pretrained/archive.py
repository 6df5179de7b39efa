"""Extracting an untrusted release archive (zip or tar) and finding the t5x checkpoint inside.

Every member is checked before anything is written: only regular files and directories whose
names stay inside the target folder (no absolute paths, no `..`, no symlinks or hardlinks, no
devices), and the members' declared sizes must sum to at most `max_extract_bytes` (a zip bomb
is refused before it fills the disk; `default_max_bytes`). While copying, a member that yields
more than its declared size is refused too (a zip's sizes are only what its header claims).
Extraction goes to a temporary sibling folder renamed into place at the end, so a refused or
interrupted extraction leaves nothing behind that a later run would take for complete.
"""
from __future__ import annotations

import gzip
import lzma
import os
import posixpath
import re
import shutil
import stat
import tarfile
import uuid
import zipfile
import zlib
from typing import BinaryIO, Iterator, List, Optional, Tuple

from flip_t5x import checkpoints
from flip_t5x import progress

CHUNK = 1 << 20
_STEP_DIR_RE = re.compile(rf"^{checkpoints.STEP_PREFIX}_(\d+)$")
# The default extraction limit: 10 bytes out per archive byte, and never under 1 GiB. A release
# checkpoint is float weights, which barely compress (docs/architecture.md, released models), so
# a genuine archive expands to little more than its size (a few GB for ViT-H/14); a zip bomb
# expands ~1000x per deflate layer.
MAX_EXPANSION = 10
MIN_MAX_BYTES = 1 << 30
# What a damaged archive (or one whose headers lie) raises while it is read.
_DAMAGED = (zipfile.BadZipFile, tarfile.TarError, zlib.error, gzip.BadGzipFile, lzma.LZMAError,
            EOFError, NotImplementedError)


class ArchiveError(ValueError):
  """An archive that is not one, would write outside its folder, or holds no t5x checkpoint."""


def _safe_name(name: str, archive: str) -> str:
  """The member's relative path, or ArchiveError when it would land outside the target."""
  unified = name.replace("\\", "/")
  parts = [p for p in unified.split("/") if p not in ("", ".")]
  if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":") or ".." in parts:
    raise ArchiveError(f"{archive}: member {name!r} would be written outside the extraction "
                       "folder (absolute path or '..'): refusing the archive")
  return posixpath.join(*parts) if parts else ""


# A checked member: (relative path, is a folder, declared size in bytes, the archive's info).
Member = Tuple[str, bool, int, object]


def _zip_members(zf: zipfile.ZipFile, archive: str) -> Iterator[Member]:
  for info in zf.infolist():
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix mode (e.g. written on Windows)
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
      raise ArchiveError(f"{archive}: member {info.filename!r} is a link or special file: "
                         "refusing the archive")
    yield _safe_name(info.filename, archive), info.is_dir(), info.file_size, info


def _tar_members(tf: tarfile.TarFile, archive: str) -> Iterator[Member]:
  for info in tf.getmembers():
    if not (info.isreg() or info.isdir()):
      raise ArchiveError(f"{archive}: member {info.name!r} is a link or special file: "
                         "refusing the archive")
    yield _safe_name(info.name, archive), info.isdir(), info.size, info


def default_max_bytes(archive_size: int) -> int:
  """How far an archive of `archive_size` bytes may expand unless told otherwise (see above)."""
  return max(MAX_EXPANSION * archive_size, MIN_MAX_BYTES)


def _check_total(members: List[Member], archive: str, limit: int) -> None:
  total = sum(size for _, is_dir, size, _ in members if not is_dir)
  if total > limit:
    raise ArchiveError(
        f"{archive} would expand to {progress.format_bytes(total)} ({total} bytes), past the "
        f"limit of {progress.format_bytes(limit)} ({limit} bytes): refusing the archive "
        "(a zip bomb?); if you trust it, raise max_extract_bytes (pretrained.resolve) or extract "
        "it yourself for flip_t5x.import_checkpoint")


def copy_member(src: BinaryIO, out: BinaryIO, what: str, declared: int) -> int:
  """Copies `src` to `out` (bytes written); ArchiveError once it yields more than `declared`."""
  written = 0
  for block in iter(lambda: src.read(CHUNK), b""):
    written += len(block)
    if written > declared:
      raise ArchiveError(f"{what} expands past its declared size of {declared} bytes: refusing "
                         "the archive")
    out.write(block)
  return written


def _write_members(members: List[Member], open_member, root: str, archive: str) -> None:
  real_root = os.path.realpath(root)
  for name, is_dir, size, info in members:
    if not name:
      continue
    dest = os.path.join(root, *name.split("/"))
    if not os.path.realpath(dest).startswith(real_root + os.sep):  # belt and braces
      raise ArchiveError(f"member {name!r} resolves outside {root}")
    if is_dir:
      os.makedirs(dest, exist_ok=True)
      continue
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open_member(info) as src, open(dest, "wb") as out:
      copy_member(src, out, f"{archive}: member {name!r}", size)


def extract(archive: str, target: str, max_extract_bytes: Optional[int] = None) -> str:
  """Extracts `archive` (zip, tar, tar.gz, ...) into the new folder `target`; returns `target`.

  `max_extract_bytes` bounds the members' declared sizes, summed (default: `default_max_bytes`).
  Raises:
    ArchiveError: not a zip or tar archive, a damaged one, a member that would land outside
      `target`, or more bytes than `max_extract_bytes` (declared) or a member's declared size
      (written).
  """
  if os.path.exists(target):
    raise ArchiveError(f"extraction folder {target} already exists")
  if max_extract_bytes is None:
    max_extract_bytes = default_max_bytes(os.path.getsize(archive))
  tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
  os.makedirs(tmp)
  try:
    if zipfile.is_zipfile(archive):
      with zipfile.ZipFile(archive) as zf:
        members = list(_zip_members(zf, archive))  # all checked before anything is written
        _check_total(members, archive, max_extract_bytes)
        _write_members(members, zf.open, tmp, archive)
    elif tarfile.is_tarfile(archive):
      with tarfile.open(archive) as tf:
        members = list(_tar_members(tf, archive))
        _check_total(members, archive, max_extract_bytes)
        _write_members(members, tf.extractfile, tmp, archive)
    else:
      raise ArchiveError(f"{archive} is neither a zip nor a tar archive")
    os.rename(tmp, target)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if isinstance(e, _DAMAGED):
      raise ArchiveError(f"{archive} is damaged or its headers lie ({e}): refusing the "
                         "archive") from e
    raise
  return target


def _is_msgpack_checkpoint(path: str) -> bool:
  """t5x's msgpack `checkpoint` file starts with a map (TF writes a text file of that name)."""
  with open(path, "rb") as f:
    head = f.read(1)
  return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


def find_t5x_checkpoint(root: str) -> str:
  """The directory under `root` holding the t5x msgpack `checkpoint` file, wherever it lies.

  Several `checkpoint_<step>` siblings: the latest step (as FLIP's own restore takes).
  Raises:
    ArchiveError: none, or several unrelated ones.
  """
  found = sorted(d for d, _, files in os.walk(root) if checkpoints.MSGPACK_FILE in files
                 and _is_msgpack_checkpoint(os.path.join(d, checkpoints.MSGPACK_FILE)))
  if not found:
    listing = sorted(os.path.relpath(os.path.join(d, f), root)
                     for d, _, files in os.walk(root) for f in files)[:10]
    raise ArchiveError(f"no t5x checkpoint (a msgpack file named 'checkpoint') in the archive; "
                       f"it holds {listing}")
  if len(found) == 1:
    return found[0]
  steps = [_STEP_DIR_RE.match(os.path.basename(d)) for d in found]
  if len({os.path.dirname(d) for d in found}) == 1 and all(steps):
    return max(zip(found, steps), key=lambda fs: int(fs[1].group(1)))[0]
  raise ArchiveError("several t5x checkpoints in the archive: " + ", ".join(
      os.path.relpath(d, root) for d in found))
