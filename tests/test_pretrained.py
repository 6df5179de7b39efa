"""Released models by name (`flip_t5x.pretrained`): download, extraction, import, cache, refusals.

No internet: a local HTTP server (honouring Range, counting requests) serves a tiny release-format
archive, a zip holding a t5x msgpack checkpoint of the tiny model in a sub-folder, written as the
FLIP release was (`test_import_checkpoint.write_t5x_checkpoint`). The tiny model gets a text table
the size of FLIP's BERT vocabulary, so the predictor runs with the default VOCAB_FILE, as the
released models do.
"""
import fcntl
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile

import jax
import numpy as np
import pytest
import tensorflow as tf

from flip_t5x.checkpoints import importer as ic
from flip_t5x import pretrained
from flip_t5x import predictor as predictor_lib
from flip_t5x.checkpoints import release as release_lib
from flip_t5x.pretrained import archive
from flip_t5x.pretrained import download
import test_import_checkpoint as tic
import test_train_helpers as h

ARCHIVE = "flip_tiny_test_v2.zip"
BERT_VOCAB_SIZE = 30523  # FLIP's vocabulary: 30,522 lines + 1


class _Handler(http.server.BaseHTTPRequestHandler):
  """Serves `server.files`; honours `Range: bytes=N-`; `server.cut` truncates the next body."""

  def do_GET(self):  # pylint: disable=invalid-name
    srv = self.server
    srv.requests.append((self.path, self.headers.get("Range"), self.headers.get("If-Range")))
    data = srv.files.get(self.path)
    if data is None:
      self.send_error(404)
      return
    rng = self.headers.get("Range")
    start = int(rng[len("bytes="):].split("-")[0]) if rng else 0
    if start >= len(data):
      self.send_response(416)
      self.send_header("Content-Range", f"bytes */{len(data)}")
      self.send_header("Content-Length", "0")
      self.end_headers()
      return
    self.send_response(206 if rng else 200)
    if rng:
      self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    self.send_header("Content-Length", str(len(data) - start))
    self.send_header("Last-Modified", "Wed, 01 Jan 2025 00:00:00 GMT")
    self.end_headers()
    body = data[start:]
    if srv.cut:
      srv.cut = False
      body = body[:len(body) // 2]  # then the connection closes: an interrupted download
    self.wfile.write(body)
    srv.bytes_sent += len(body)

  def log_message(self, *args):
    del args


@pytest.fixture(scope="module")
def server():
  srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
  srv.files, srv.requests, srv.cut, srv.bytes_sent = {}, [], False, 0
  thread = threading.Thread(target=srv.serve_forever, daemon=True)
  thread.start()
  yield srv
  srv.shutdown()
  srv.server_close()


def _url(srv, path):
  return f"http://127.0.0.1:{srv.server_address[1]}{path}"


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """The release checkpoint, its zip (checkpoint in a sub-folder), the gin file, a direct import."""
  tmp = tmp_path_factory.mktemp("release")
  gin_file = tmp / "flip_tiny_bert.gin"
  gin_file.write_text(f"include '{os.path.join(h.ROOT, tic.TINY_GIN)}'\n"
                      f"VOCAB_SIZE = {BERT_VOCAB_SIZE}\n")
  sizes = dict(tic.TINY, vocab=BERT_VOCAB_SIZE)
  ckpt_dir = tic.write_t5x_checkpoint(str(tmp / "tree" / "flip_tiny" / "release"),
                                      tic.official_tree(np.random.default_rng(0), **sizes))
  zip_path = tmp / ARCHIVE
  with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
    for folder, _, files in os.walk(tmp / "tree"):
      for name in files:
        path = os.path.join(folder, name)
        zf.write(path, os.path.relpath(path, tmp / "tree"))
  model = pretrained._model(str(gin_file))  # pylint: disable=protected-access
  direct = str(tmp / "direct")
  params, step = ic.import_checkpoint(ckpt_dir, model, output=direct)
  data = zip_path.read_bytes()
  return dict(tmp=tmp, gin_file=str(gin_file), zip=str(zip_path), data=data, params=params,
              direct=os.path.join(direct, f"checkpoint_{step}"), step=step,
              sha256=hashlib.sha256(data).hexdigest())


@pytest.fixture
def registered(server, release):
  """`flip_tiny_test` registered with the real API, served at a fresh URL per test."""
  server.files = {f"/{ARCHIVE}": release["data"]}
  server.requests.clear()
  entry = pretrained.register(pretrained.PretrainedModel(
      "flip_tiny_test", _url(server, f"/{ARCHIVE}"), release["gin_file"], "tiny test model",
      zeroshot_in1k=1.5))
  yield entry
  pretrained.unregister(entry.name)


def _gets(srv):
  return [r for r in srv.requests if r[0] == f"/{ARCHIVE}"]


def _embeddings(pred, rng_seed=3):
  rng = np.random.default_rng(rng_seed)
  pixels = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  return pred.encode_images(list(pixels)), pred.encode_texts(["a photo of a cat", "dogs"])


# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resolve_downloads_imports_and_reuses(registered, server, release, tmp_path):
  cache = str(tmp_path / "cache")
  out = io.StringIO()
  found = pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=out)
  assert len(_gets(server)) == 1
  progress = out.getvalue()
  assert "100%" in progress and re.search(r"[\d.]+ (B|KiB|MiB|GiB)/s", progress), progress
  assert "ETA" in progress, progress
  assert len(progress.splitlines()) > 2  # not a terminal: a line per tenth, then the last
  assert found.checkpoint == os.path.join(cache, "models", "flip_tiny_test",
                                          f"checkpoint_{release['step']}")
  assert found.gin_file == release["gin_file"]
  # The cached import holds the same parameters as a direct import, and predicts the same.
  pred = predictor_lib.FlipPredictor.from_pretrained("flip_tiny_test", cache_dir=cache)
  assert len(_gets(server)) == 1
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(pred.params),
                         release["params"])
  direct = predictor_lib.FlipPredictor.from_checkpoint(release["direct"], release["gin_file"])
  for a, b in zip(_embeddings(pred), _embeddings(direct)):
    np.testing.assert_array_equal(a, b)
  # Second use: the cached import, no request, nothing printed.
  again = io.StringIO()
  assert pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=again) == found
  assert len(_gets(server)) == 1 and again.getvalue() == ""
  row = [l for l in pretrained.list_models(cache).splitlines() if "flip_tiny_test" in l][0]
  assert re.split(r"\s{2,}", row)[:4] == ["flip_tiny_test", "tiny test model", "1.5", "yes"], row
  # Only finished entries in the cache: the archive, its record, the import.
  assert sorted(os.listdir(os.path.join(cache, "downloads"))) == [ARCHIVE, ARCHIVE + ".json"]
  assert os.listdir(os.path.join(cache, "models")) == ["flip_tiny_test"]


def test_cached_download_is_checked_against_its_record(registered, server, release, tmp_path):
  cache = str(tmp_path / "cache")
  pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=io.StringIO())
  shutil.rmtree(os.path.join(cache, "models"))
  pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=io.StringIO())
  assert len(_gets(server)) == 1  # the intact download was reused
  shutil.rmtree(os.path.join(cache, "models"))
  with open(os.path.join(cache, "downloads", ARCHIVE), "r+b") as f:  # same size, other bytes
    f.seek(100)
    f.write(b"tampered")
  found = pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=io.StringIO())
  assert len(_gets(server)) == 2  # not trusted: fetched again
  with open(os.path.join(cache, "downloads", ARCHIVE), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == release["sha256"]
  assert os.path.isdir(found.checkpoint)


def test_interrupted_download_resumes(registered, server, release, tmp_path):
  cache = str(tmp_path / "cache")
  server.cut, server.bytes_sent = True, 0
  with pytest.raises(download.DownloadError, match="run again to resume"):
    pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=io.StringIO())
  downloads = os.path.join(cache, "downloads")
  part = os.path.join(downloads, ARCHIVE + ".part")
  have = os.path.getsize(part)
  assert 0 < have < len(release["data"])
  assert not os.path.exists(os.path.join(downloads, ARCHIVE))  # nothing a later run would trust
  assert not os.path.exists(os.path.join(cache, "models", "flip_tiny_test"))
  found = pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=io.StringIO())
  assert _gets(server)[-1][1:] == (f"bytes={have}-", "Wed, 01 Jan 2025 00:00:00 GMT")
  assert server.bytes_sent == len(release["data"])  # each byte sent once
  assert os.path.isdir(found.checkpoint) and not os.path.exists(part)
  # Stopped after the last byte but before the rename: the complete .part is not fetched again.
  shutil.rmtree(os.path.join(cache, "models"))
  os.rename(os.path.join(downloads, ARCHIVE), part)
  with open(part + ".json", "w") as f:
    json.dump({"url": registered.url, "validator": "Wed, 01 Jan 2025 00:00:00 GMT"}, f)
  os.remove(os.path.join(downloads, ARCHIVE + ".json"))
  server.bytes_sent = 0
  found = pretrained.resolve("flip_tiny_test", cache_dir=cache, stream=io.StringIO())
  assert _gets(server)[-1][1] == f"bytes={len(release['data'])}-" and server.bytes_sent == 0
  assert os.path.isdir(found.checkpoint) and not os.path.exists(part)


def test_sha256_pin(registered, server, release, tmp_path):
  cache = str(tmp_path / "cache")
  with pytest.raises(download.DownloadError, match="sha256 mismatch"):
    pretrained.resolve("flip_tiny_test", cache_dir=cache, sha256="0" * 64, stream=io.StringIO())
  assert os.listdir(os.path.join(cache, "downloads")) == []  # the bad file is not kept
  assert not os.path.exists(os.path.join(cache, "models"))
  found = pretrained.resolve("flip_tiny_test", cache_dir=cache, sha256=release["sha256"],
                             stream=io.StringIO())
  assert os.path.isdir(found.checkpoint)
  # A pin the cached import was not made from is not served from the cache either.
  with pytest.raises(download.DownloadError, match="sha256 mismatch"):
    pretrained.resolve("flip_tiny_test", cache_dir=cache, sha256="1" * 64, stream=io.StringIO())


def test_offline_archive_path_and_tar(registered, server, release, tmp_path, monkeypatch):
  """A path to the downloaded archive (as released, or a tar of it) needs no server."""
  local = tmp_path / "elsewhere" / ARCHIVE
  local.parent.mkdir()
  shutil.copy(release["zip"], local)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # the default cache_dir
  found = pretrained.resolve(str(local), stream=io.StringIO())
  assert found.name == "flip_tiny_test"
  cache = tmp_path / "xdg" / "flip_t5x"
  assert found.checkpoint.startswith(str(cache / "models" / "flip_tiny_test"))
  assert os.path.isdir(found.checkpoint)
  assert not os.path.exists(cache / "downloads")  # read in place, not copied
  tar_path = tmp_path / "flip_tiny_test.tar.gz"
  with tarfile.open(tar_path, "w:gz") as tf:
    tf.add(release["tmp"] / "tree" / "flip_tiny", arcname="some/dir")
  pretrained.register(pretrained.PretrainedModel("flip_tiny_tar", str(tar_path),
                                                 release["gin_file"]))
  try:
    tar_found = pretrained.resolve("flip_tiny_tar", cache_dir=str(tmp_path / "b"),
                                   stream=io.StringIO())
  finally:
    pretrained.unregister("flip_tiny_tar")
  assert _gets(server) == []
  pred = predictor_lib.FlipPredictor.from_checkpoint(tar_found.checkpoint, release["gin_file"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.device_get(pred.params),
                         release["params"])


def _zip_with(path, name, data=b"x", symlink=False):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("release/readme.txt", "fine")
    info = zipfile.ZipInfo(name)
    if symlink:
      info.external_attr = (stat.S_IFLNK | 0o777) << 16
    zf.writestr(info, data)


def _tar_with(path, name, kind=tarfile.REGTYPE, linkname=""):
  with tarfile.open(path, "w") as tf:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    data = b"" if kind != tarfile.REGTYPE else b"evil"
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["zip_dotdot", "zip_absolute", "zip_symlink", "tar_dotdot",
                                  "tar_absolute", "tar_symlink", "tar_hardlink"])
def test_malicious_archives_are_refused(kind, release, tmp_path):
  outside = tmp_path / "outside"  # where each archive tries to write
  cache = tmp_path / "cache"
  path = str(tmp_path / ("bad.zip" if kind.startswith("zip") else "bad.tar"))
  target = {"dotdot": "../../../../outside", "absolute": str(outside)}.get(kind.split("_")[1])
  if kind == "zip_symlink":
    _zip_with(path, "release/link", data=str(outside).encode(), symlink=True)
  elif kind.startswith("zip"):
    _zip_with(path, target)
  elif kind == "tar_symlink":
    _tar_with(path, "release/link", tarfile.SYMTYPE, str(outside))
  elif kind == "tar_hardlink":
    _tar_with(path, "release/link", tarfile.LNKTYPE, str(outside))
  else:
    _tar_with(path, target)
  pretrained.register(pretrained.PretrainedModel("flip_bad", path, release["gin_file"]))
  try:
    reason = "link or special file" if "link" in kind else "outside the extraction folder"
    with pytest.raises(archive.ArchiveError, match=reason):
      pretrained.resolve("flip_bad", cache_dir=str(cache), stream=io.StringIO())
  finally:
    pretrained.unregister("flip_bad")
  assert not os.path.lexists(outside)
  assert sorted(os.listdir(tmp_path)) == sorted(["cache", os.path.basename(path)])
  assert os.listdir(cache / "models") == []  # no half-extracted folder, no import


MIB = 1 << 20


def _zip_bomb(path, size, declared=None):
  """A real zip of `size` zero bytes (deflate packs ~1000 into 1); `declared`: what its headers
  claim instead (local header and central directory both rewritten)."""
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    zf.writestr("release/zeros.bin", bytes(size))
  if declared is not None:
    with open(path, "rb") as f:
      data = bytearray(f.read())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
      at = data.index(signature) + offset
      assert struct.unpack_from("<I", data, at) == (size,)
      struct.pack_into("<I", data, at, declared)
    with open(path, "wb") as f:
      f.write(data)


def _tar_bomb(path, size):
  with tarfile.open(path, "w:gz") as tf:
    info = tarfile.TarInfo("release/zeros.bin")
    info.size = size
    tf.addfile(info, io.BytesIO(bytes(size)))


def _refused(path, release, tmp_path, max_extract_bytes=None):
  """The one-line ArchiveError `resolve` gives for the archive at `path`; checks nothing is left."""
  cache = tmp_path / "cache"
  pretrained.register(pretrained.PretrainedModel("flip_bomb", str(path), release["gin_file"]))
  try:
    with pytest.raises(archive.ArchiveError) as e:
      pretrained.resolve("flip_bomb", cache_dir=str(cache), stream=io.StringIO(),
                         max_extract_bytes=max_extract_bytes)
  finally:
    pretrained.unregister("flip_bomb")
  assert os.listdir(cache / "models") == []  # no import, no half-extracted folder
  assert sorted(os.listdir(tmp_path)) == sorted(["cache", os.path.basename(path)])
  message = str(e.value)
  assert "\n" not in message and message.startswith(f"{path} "), message
  return message


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_archive_expanding_past_the_limit_is_refused(kind, release, tmp_path):
  path = tmp_path / f"bomb.{kind}"
  (_zip_bomb if kind == "zip" else _tar_bomb)(path, 4 * MIB)
  assert os.path.getsize(path) < 64 << 10  # it is a bomb: 4 MiB out of a few KiB
  message = _refused(path, release, tmp_path, max_extract_bytes=MIB)
  assert message.endswith("would expand to 4.0 MiB (4194304 bytes), past the limit of 1.0 MiB "
                          "(1048576 bytes): refusing the archive (a zip bomb?); if you trust it, "
                          "raise max_extract_bytes (pretrained.resolve) or extract it yourself "
                          "for flip_t5x.import_checkpoint"), message
  # The limit is what refused it: at exactly its size, it extracts.
  out = archive.extract(str(path), str(tmp_path / "out"), max_extract_bytes=4 * MIB)
  assert os.path.getsize(os.path.join(out, "release", "zeros.bin")) == 4 * MIB


def test_zip_whose_headers_lie_is_refused(release, tmp_path):
  # Claiming more than the default limit (10x the archive, at least 1 GiB): refused from the
  # headers alone, before anything is written.
  path = tmp_path / "claims_2gib.zip"
  _zip_bomb(path, MIB, declared=2 << 30)
  message = _refused(path, release, tmp_path)
  assert "would expand to 2.0 GiB (2147483648 bytes), past the limit of 1.0 GiB (1073741824 " \
         "bytes)" in message, message
  os.remove(path)
  # Claiming less than it holds: never more than the claim is written; the member is refused.
  path = tmp_path / "claims_100b.zip"
  _zip_bomb(path, MIB, declared=100)
  message = _refused(path, release, tmp_path, max_extract_bytes=1000)
  assert "is damaged or its headers lie (Bad CRC-32 for file 'release/zeros.bin')" in message


def test_copy_member_stops_at_the_declared_size():
  """The guard for readers that would yield more than a member's header claims."""
  out = io.BytesIO()
  with pytest.raises(archive.ArchiveError, match=r"^a.zip: member 'x' expands past its declared "
                     r"size of 4 bytes: refusing the archive$"):
    archive.copy_member(io.BytesIO(b"0123456789"), out, "a.zip: member 'x'", 4)
  assert out.getvalue() == b""  # the block that overran was not written
  assert archive.copy_member(io.BytesIO(b"0123456789"), out, "a.zip: member 'x'", 10) == 10
  assert out.getvalue() == b"0123456789"


# Imports a registered model into a cache, as two users' processes would at once.
_RESOLVE_REGISTERED_MODEL = """
import sys
from flip_t5x import pretrained
pretrained.register(pretrained.PretrainedModel("flip_tiny_test", sys.argv[1], sys.argv[2]))
print(pretrained.resolve("flip_tiny_test", cache_dir=sys.argv[3]).checkpoint, flush=True)
"""


@pytest.mark.e2e
def test_two_processes_importing_at_once_make_one_import(release, tmp_path):
  """Both wait for the import lock (held here until both are at it), one imports, both succeed."""
  cache = tmp_path / "cache"
  (cache / "locks").mkdir(parents=True)
  run = dict(cwd=h.ROOT, env=h.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  with open(cache / "locks" / "flip_tiny_test.lock", "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    procs = [subprocess.Popen([sys.executable, "-c", _RESOLVE_REGISTERED_MODEL, release["zip"],
                               release["gin_file"], str(cache)], **run) for _ in range(2)]
    for proc in procs:
      seen = []
      while not any("waiting for another process" in line for line in seen):
        seen.append(proc.stderr.readline())
        assert seen[-1], "".join(seen) + proc.stderr.read()  # ended without waiting
      assert seen[-1].strip() == ("waiting for another process fetching or importing "
                                  f"flip_tiny_test (it holds {lock.name})"), seen
    assert not os.path.exists(cache / "models")  # nobody imports while the lock is held
  results = [proc.communicate(timeout=300) for proc in procs]
  for proc, (out, err) in zip(procs, results):
    assert proc.returncode == 0, err[-4000:]
  checkpoints = {out.strip().splitlines()[-1] for out, _ in results}
  assert checkpoints == {str(cache / "models" / "flip_tiny_test" / f"checkpoint_{release['step']}")}
  imports = [l for _, err in results for l in err.splitlines() if l.startswith("importing ")]
  assert len(imports) == 1, imports  # the other reused it
  assert os.listdir(cache / "models") == ["flip_tiny_test"]  # no leftover .tmp-*


def test_archive_without_checkpoint_and_unknown_names(release, tmp_path):
  path = str(tmp_path / "empty.zip")
  _zip_with(path, "release/notes.txt")
  pretrained.register(pretrained.PretrainedModel("flip_empty", path, release["gin_file"]))
  try:
    with pytest.raises(archive.ArchiveError, match="no t5x checkpoint"):
      pretrained.resolve("flip_empty", cache_dir=str(tmp_path / "cache"), stream=io.StringIO())
  finally:
    pretrained.unregister("flip_empty")
  assert os.listdir(tmp_path / "cache" / "models") == []
  # A failed import (the archive does not fit the gin model) leaves no import either.
  pretrained.register(pretrained.PretrainedModel(
      "flip_wrong_size", release["zip"], os.path.join(h.ROOT, tic.TINY_GIN)))  # VOCAB_SIZE 1000
  try:
    with pytest.raises(release_lib.CheckpointMismatchError, match="token_embedding"):
      pretrained.resolve("flip_wrong_size", cache_dir=str(tmp_path / "cache"), stream=io.StringIO())
  finally:
    pretrained.unregister("flip_wrong_size")
  assert os.listdir(tmp_path / "cache" / "models") == []
  with pytest.raises(pretrained.PretrainedError, match="flip_vit_l16_laion2b"):
    pretrained.resolve("flip_vit_x99", cache_dir=str(tmp_path / "cache"))
  with pytest.raises(pretrained.PretrainedError, match="flip_large16_laion2b_v2.zip"):
    pretrained.resolve("/data/other.zip", cache_dir=str(tmp_path / "cache"))


def test_registry_holds_the_releases():
  l16, h14 = pretrained.get("flip_vit_l16_laion2b"), pretrained.get("flip_vit_h14_laion2b")
  assert l16.url == "https://dl.fbaipublicfiles.com/flip/flip_large16_laion2b_v2.zip"
  assert h14.url == "https://dl.fbaipublicfiles.com/flip/flip_huge14_laion2b_v2.zip"
  assert (l16.zeroshot_in1k, h14.zeroshot_in1k) == (76.4, 78.5)
  for m in (l16, h14):
    assert os.path.isfile(pretrained.gin_file_path(m))



def test_gfile_source_is_copied_into_the_cache(release, tmp_path):
  """gs:// and every other tf.io.gfile scheme take the same path (here TF's in-memory ram://)."""
  url = f"ram://flip_pretrained_test/{ARCHIVE}"
  with tf.io.gfile.GFile(url, "wb") as f:
    f.write(release["data"])
  pretrained.register(pretrained.PretrainedModel("flip_tiny_gfile", url, release["gin_file"]))
  out = io.StringIO()
  try:
    found = pretrained.resolve("flip_tiny_gfile", cache_dir=str(tmp_path), stream=out)
  finally:
    pretrained.unregister("flip_tiny_gfile")
    tf.io.gfile.remove(url)
  assert "100%" in out.getvalue()
  with open(tmp_path / "downloads" / ARCHIVE, "rb") as f:
    assert f.read() == release["data"]
  assert os.path.isdir(found.checkpoint)


@pytest.mark.e2e
def test_cli_lists_the_models(tmp_path):
  proc = h.run_binary("predict", ["--pretrained=list", f"--pretrained_cache_dir={tmp_path}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines[0].split()[0] == "name"
  rows = {l.split()[0]: l for l in lines[1:]}
  assert set(rows) == {"flip_vit_h14_laion2b", "flip_vit_l16_laion2b"}
  assert "76.4" in rows["flip_vit_l16_laion2b"] and "78.5" in rows["flip_vit_h14_laion2b"]
  assert re.split(r"\s{2,}", rows["flip_vit_l16_laion2b"])[3] == "no"


@pytest.mark.e2e
def test_cli_unknown_name_is_one_line(tmp_path):
  (tmp_path / "a.png").write_bytes(b"not read: the name fails first")
  proc = h.run_binary("predict", ["--pretrained=flip_vit_x99", f"--pretrained_cache_dir={tmp_path}",
                                  f"--images={tmp_path}", "--labels=cat,dog"])
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("flip_t5x.predict: error: 'flip_vit_x99' is neither") and "flip_vit_l16_laion2b" in last
  assert "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_cli_refuses_a_zip_bomb_in_one_line(tmp_path):
  """Under the release's file name, so `--pretrained=PATH` takes it for the ViT-L/16 archive."""
  bomb = tmp_path / "flip_large16_laion2b_v2.zip"
  _zip_bomb(bomb, MIB, declared=3 << 30)
  (tmp_path / "a.png").write_bytes(b"not read: the archive fails first")
  cache = tmp_path / "cache"
  proc = h.run_binary("predict", [f"--pretrained={bomb}", f"--pretrained_cache_dir={cache}",
                                  f"--images={tmp_path}", "--labels=cat,dog"])
  assert proc.returncode == 2, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"flip_t5x.predict: error: {bomb} would expand to 3.0 GiB "
                         "(3221225472 bytes), past the limit of 1.0 GiB"), last
  assert "Traceback" not in proc.stderr
  assert os.listdir(cache / "models") == []


# A user's registration, then the eval binary as `python -m` runs it.
_EVAL_WITH_REGISTERED_MODEL = """
import runpy, sys
from flip_t5x import pretrained
pretrained.register(pretrained.PretrainedModel("flip_tiny_test", sys.argv[1], sys.argv[2]))
sys.argv = ["flip_t5x.eval"] + sys.argv[3:]
runpy.run_module("flip_t5x.eval", run_name="__main__", alter_sys=True)
"""


@pytest.mark.e2e
def test_eval_scores_a_named_model_as_its_checkpoint(release, tmp_path):
  """`flip_t5x.eval --pretrained=NAME` = the same eval given the imported checkpoint by hand."""
  for i, name in enumerate(("cat", "dog", "car")):
    (tmp_path / "zeroshot" / name).mkdir(parents=True)
    for j in range(2):
      pixels = np.random.default_rng(10 * i + j).integers(0, 256, (40, 36, 3), dtype=np.uint8)
      tf.io.write_file(str(tmp_path / "zeroshot" / name / f"{j}.png"),
                       tf.io.encode_png(pixels))
  eval_gin = tmp_path / "eval.gin"
  eval_gin.write_text(f"include '{h.ROOT}/gin_configs/runs/eval.gin'\n"
                      "MIXTURE_OR_TASK_NAME = 'flip_folder_zeroshot'\n"
                      f"ZEROSHOT_FOLDER = '{tmp_path / 'zeroshot'}'\n"
                      "utils.DatasetConfig.batch_size = 4\n")
  run = dict(cwd=h.ROOT, env=h.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  named = subprocess.Popen(
      [sys.executable, "-c", _EVAL_WITH_REGISTERED_MODEL, release["zip"], release["gin_file"],
       "--pretrained=flip_tiny_test", f"--pretrained_cache_dir={tmp_path / 'cache'}",
       f"--gin_file={eval_gin}", f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'named'}'"], **run)
  by_hand = subprocess.Popen(
      [sys.executable, "-m", "flip_t5x.eval", f"--gin_file={eval_gin}",
       f"--gin_file={release['gin_file']}", f"--gin.CHECKPOINT_PATH='{release['direct']}'",
       f"--gin.EVAL_OUTPUT_DIR='{tmp_path / 'by_hand'}'"], **run)
  results = []
  for proc in (named, by_hand):
    out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err[-4000:]
    results.append(json.loads(out.strip().splitlines()[-1]))
  assert results[0]["checkpoint_path"].startswith(str(tmp_path / "cache" / "models"))
  assert results[0]["num_examples"] == 6
  assert "top1" in results[0]
  timing = ("checkpoint_path", "seconds", "images_per_second")
  named_metrics, hand_metrics = ({k: v for k, v in r.items() if k not in timing}
                                 for r in results)
  assert named_metrics == hand_metrics
