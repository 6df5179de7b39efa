"""Fetching a release archive into the cache: http(s) with resume, gs:// and local paths.

A download is written to `<name>.part` (with `<name>.part.json` naming its URL and the server's
validator, so a resume only continues the same file) and renamed to `<name>` only when complete,
after `<name>.json` has recorded its URL, size and sha256. On reuse the file is checked against
that record; a file without one, or that no longer matches it, is not trusted (fetched again).
A `sha256` pin that the bytes do not match is an error, and the bad file is deleted.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, Optional, TextIO, Tuple

from absl import logging
import tensorflow as tf

from flip_t5x import progress as progress_lib

CHUNK = 1 << 20
TIMEOUT_S = 60


class DownloadError(RuntimeError):
  """A download or a cached archive that cannot be used; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------
def is_url(source: str) -> bool:
  return urllib.parse.urlparse(source).scheme in ("http", "https")


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with tf.io.gfile.GFile(path, "rb") as f:
    for block in iter(lambda: f.read(CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def _read_json(path: str) -> Optional[Dict[str, Any]]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json_atomic(path: str, value: Dict[str, Any]) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _remove(*paths: str) -> None:
  for p in paths:
    if os.path.lexists(p):
      os.remove(p)


def check_pin(actual: str, sha256: Optional[str], what: str) -> None:
  if sha256 is not None and actual != sha256.lower():
    raise DownloadError(f"sha256 mismatch for {what}: expected {sha256.lower()}, got {actual}")


# ------------------------------------------------------------------------------------------------
class _RangeNotSatisfiable(Exception):
  """HTTP 416 for a resume: `total` is the file's size the server gave (None if not given)."""

  def __init__(self, total: Optional[int]):
    super().__init__(total)
    self.total = total


def _open_http(url: str, offset: int, validator: Optional[str]) -> Any:
  request = urllib.request.Request(url, headers={"User-Agent": "flip_t5x"})
  if offset:
    request.add_header("Range", f"bytes={offset}-")
    if validator:
      request.add_header("If-Range", validator)
  try:
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    if e.code == 416 and offset:  # nothing from `offset` on: complete already, or another file
      total = (e.headers.get("Content-Range") or "").rpartition("/")[2]
      raise _RangeNotSatisfiable(int(total) if total.isdigit() else None) from e
    raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from e
  except (urllib.error.URLError, OSError) as e:
    raise DownloadError(f"cannot download {url}: {getattr(e, 'reason', e)} (offline? download "
                        "the archive elsewhere and pass its path instead of the name)") from e


def _http_to_part(url: str, part: str, label: str, stream: Optional[TextIO]) -> None:
  """Downloads `url` into `part`, continuing a partial file of the same URL and validator."""
  meta_path = part + ".json"
  meta = _read_json(meta_path) or {}
  offset = os.path.getsize(part) if os.path.exists(part) and meta.get("url") == url else 0
  try:
    response = _open_http(url, offset, meta.get("validator"))
  except _RangeNotSatisfiable as e:
    if e.total == offset:  # the last run stopped after the last byte, before the rename
      return
    offset, response = 0, _open_http(url, 0, None)
  with response:
    total = response.headers.get("Content-Length")
    total = int(total) if total is not None else None
    if offset and response.status == 206:
      content_range = response.headers.get("Content-Range", "")
      if not content_range.startswith(f"bytes {offset}-"):
        raise DownloadError(f"{url}: server answered range {content_range!r} for bytes {offset}-")
      total = int(content_range.rsplit("/", 1)[1]) if "/" in content_range else None
      logging.info("resuming %s at byte %d", url, offset)
    else:
      offset = 0  # the server sent the whole file
      validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
      write_json_atomic(meta_path, {"url": url, "validator": validator})
    progress = progress_lib.Progress(label, total, offset, progress_lib.format_bytes, stream)
    with open(part, "ab" if offset else "wb") as f:
      try:
        for block in iter(lambda: response.read(CHUNK), b""):
          f.write(block)
          progress.update(len(block))
      except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
        progress.close()
        raise DownloadError(f"download of {url} interrupted after {progress.done} bytes ({e}); "
                            "run again to resume") from e
    progress.close()
  if total is not None and os.path.getsize(part) != total:
    size = os.path.getsize(part)
    if size > total:
      _remove(part, meta_path)
    raise DownloadError(f"download of {url} ended at {size} of {total} bytes; run again to resume")


def _gfile_to_part(source: str, part: str, label: str, stream: Optional[TextIO]) -> None:
  """Copies a gs:// (any tf.io.gfile) file into `part`, continuing a partial copy."""
  meta_path = part + ".json"
  meta = _read_json(meta_path) or {}
  try:
    total = tf.io.gfile.stat(source).length
  except tf.errors.OpError as e:
    raise DownloadError(f"cannot read {source}: {e.message}") from e
  offset = os.path.getsize(part) if os.path.exists(part) and meta.get("url") == source else 0
  if offset > total:
    offset = 0
  if not offset:
    write_json_atomic(meta_path, {"url": source, "validator": None})
  progress = progress_lib.Progress(label, total, offset, progress_lib.format_bytes, stream)
  with tf.io.gfile.GFile(source, "rb") as src, open(part, "ab" if offset else "wb") as f:
    src.seek(offset)
    for block in iter(lambda: src.read(CHUNK), b""):
      f.write(block)
      progress.update(len(block))
  progress.close()


# ------------------------------------------------------------------------------------------------
def cached_archive(path: str, url: str, sha256: Optional[str]) -> Optional[str]:
  """The sha256 of `path` if it is a complete earlier download of `url` matching its record."""
  record = _read_json(path + ".json")
  if not os.path.exists(path):
    return None
  if record is None or record.get("url") != url:
    logging.warning("%s has no download record for %s: not trusted, fetching again", path, url)
    return None
  size = os.path.getsize(path)
  actual = file_sha256(path) if size == record.get("size") else None
  if actual is None or actual != record.get("sha256"):
    logging.warning("%s changed since it was downloaded (size %d, recorded %s; or its sha256): "
                    "fetching again", path, size, record.get("size"))
    return None
  if sha256 is not None and actual != sha256.lower():
    _remove(path, path + ".json")
    check_pin(actual, sha256, f"{url} (cached download deleted)")
  return actual


def fetch(url: str, downloads_dir: str, sha256: Optional[str] = None,
          stream: Optional[TextIO] = None) -> Tuple[str, str]:
  """(a local path holding the archive at `url`, its sha256).

  http(s) and gs:// are downloaded into `downloads_dir`, or reused from there; a local path is
  read where it is.
  """
  if not is_url(url) and "://" not in url:  # a local file: read in place, never copied
    path = os.path.abspath(os.path.expanduser(url))
    if not os.path.isfile(path):
      raise DownloadError(f"archive {url} does not exist")
    actual = file_sha256(path)
    check_pin(actual, sha256, path)
    return path, actual
  os.makedirs(downloads_dir, exist_ok=True)
  name = os.path.basename(urllib.parse.urlparse(url).path) or "archive"
  path = os.path.join(downloads_dir, name)
  actual = cached_archive(path, url, sha256)
  if actual:
    return path, actual
  _remove(path, path + ".json")
  part = path + ".part"
  print(f"downloading {url} -> {path}", file=stream or sys.stderr, flush=True)
  if is_url(url):
    _http_to_part(url, part, name, stream)
  else:
    _gfile_to_part(url, part, name, stream)
  actual = file_sha256(part)
  if sha256 is not None and actual != sha256.lower():
    _remove(part, part + ".json")
    check_pin(actual, sha256, f"{url} (download deleted)")
  write_json_atomic(path + ".json", {"url": url, "size": os.path.getsize(part), "sha256": actual})
  os.replace(part, path)
  _remove(part + ".json")
  return path, actual
