r"""Zero-shot labels for images, or images ranked for a text query, from a FLIP checkpoint.

  python -m flip_t5x.predict --checkpoint=/models/flip_b16 \
      --gin_file=gin_configs/models/flip_vit_b16.gin --gin.VOCAB_FILE="'/data/vocab.txt'" \
      --images='photos/*.jpg' --labels=cat,dog,car [--top_k=5] [--format=table|jsonl]
  python -m flip_t5x.predict ... --images=photos/ --labels_file=classes.txt [--templates=80]
  python -m flip_t5x.predict ... --images=photos/ --query="a dog on a beach"
  python -m flip_t5x.predict --pretrained=flip_vit_l16_laion2b --images=photos/ --labels=cat,dog
  python -m flip_t5x.predict --pretrained=list

Labels mode prints, per image, the top-k labels with probabilities (softmax of logit_scale *
cosine over the labels, class embeddings averaged over the prompt templates). Query mode ranks
the images by cosine similarity with the query (prob: softmax over the images). A directory means
its image files (by extension, not recursive); anything else is a glob (`**` recurses) or a file.
An image that cannot be read is reported on stderr and as a row with an `error` field, and the
others are still processed; the exit status is 1 only when no image could be read.
"""
from __future__ import annotations

if __name__ == "__main__":  # a binary: TF/CUDA start-up notices off unless --verbose
  from flip_t5x import _quiet  # pylint: disable=unused-import  (before TensorFlow loads)

import glob
import json
import os
import sys
from typing import List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np

from flip_t5x import predictor as predictor_lib
from flip_t5x.data import prompts
from flip_t5x.pretrained import cli as pretrained_cli
from flip_t5x.runtime import gin_utils

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")

FLAGS = flags.FLAGS


def _define_flags() -> None:
  if "gin_file" not in FLAGS:
    gin_utils.define_gin_flags()
  flags.DEFINE_string("checkpoint", None, "flip_t5x checkpoint: MODEL_DIR (latest step) or a "
                      "checkpoint_<step> directory.")
  flags.DEFINE_multi_string("images", [], "Image directory, glob or file (repeatable).")
  flags.DEFINE_list("labels", None, "Comma-separated class names.")
  flags.DEFINE_string("labels_file", None, "Class names, one per line.")
  flags.DEFINE_string("query", None, "Rank the images for this text.")
  flags.DEFINE_string("templates", None, "Prompt templates for labels: a set ('7', '80'), a file "
                      "(one per line), or one template containing '{}'. Default: the gin set "
                      "(ZEROSHOT_TEMPLATES, else '7').")
  flags.DEFINE_integer("top_k", 5, "Labels per image (labels mode); images shown (query mode, "
                       "default all).")
  flags.DEFINE_enum("format", "table", ["table", "jsonl"], "Output format.")
  flags.DEFINE_integer("batch_size", 32, "Images per jitted batch.")
  flags.DEFINE_string("vocab_file", None, "WordPiece vocabulary (default: gin VOCAB_FILE).")
  pretrained_cli.define_flags()  # --pretrained=NAME instead of --checkpoint and --gin_file


def _file_or_dangling(path: str) -> bool:
  """A file, or a name that points nowhere (a dangling link): listed, so that it gets an ERROR
  row as the eval folder source counts it; directories and devices (a FIFO would block) are not."""
  return os.path.isfile(path) or not os.path.exists(path)


def list_images(specs: Sequence[str]) -> List[str]:
  """Files named by directories (image extensions), globs or paths, in order, de-duplicated."""
  out, seen = [], set()
  for spec in specs:
    if os.path.isdir(spec):
      found = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                     if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")
                     and _file_or_dangling(os.path.join(spec, n)))
    else:
      found = sorted(p for p in glob.glob(spec, recursive=True) if not os.path.isdir(p))
      if not found:
        found = [spec]  # reported per file as unreadable, like any other bad input
    for path in found:
      if path not in seen:
        seen.add(path)
        out.append(path)
  return out


def _templates(value: Optional[str]) -> Optional[List[str]]:
  if value is None:
    return None
  if "{}" in value:
    return [value]
  return prompts.templates(value)


def embed_files(predictor, paths: Sequence[str]
                ) -> Tuple[List[int], np.ndarray, List[Tuple[int, str]]]:
  """(indices of readable files, their embeddings, [(index, error)]), batch by batch."""
  ok, errors, embeddings = [], [], []
  bs = predictor.batch_size
  for start in range(0, len(paths), bs):
    pixels = []
    for i in range(start, min(start + bs, len(paths))):
      try:
        pixels.append(predictor.preprocess_image(paths[i], paths[i]))
        ok.append(i)
      except ValueError as e:  # ImageError
        errors.append((i, str(e)))
        print(f"predict: {e}", file=sys.stderr)
    if pixels:
      embeddings.append(predictor.encode_pixels(np.stack(pixels)))
  z = np.concatenate(embeddings) if embeddings else np.zeros((0, predictor.embed_dim), np.float32)
  return ok, z, errors


def _error_text(message: str, path: str) -> str:
  prefix = f"{path}: "
  return message[len(prefix):] if message.startswith(prefix) else message


def format_labels(paths: Sequence[str], ok: Sequence[int], probs: np.ndarray,
                  errors: Sequence[Tuple[int, str]], labels: Sequence[str], k: int,
                  fmt: str) -> List[str]:
  """Output lines for labels mode, in input order."""
  rows = {}
  for i, best in zip(ok, predictor_lib.top_k(probs, k) if len(ok) else []):
    rows[i] = [(labels[j], p) for j, p in best]
  errs = dict(errors)
  lines = []
  if fmt == "jsonl":
    for i, path in enumerate(paths):
      if i in errs:
        lines.append(json.dumps({"image": path, "error": _error_text(errs[i], path)}))
      else:
        lines.append(json.dumps({"image": path, "labels": [
            {"label": lab, "prob": round(p, 6)} for lab, p in rows[i]]}))
    return lines
  w_img = max([len("image")] + [len(p) for p in paths])
  w_lab = max([len("label")] + [len(lab) for lab in labels])
  lines.append(f"{'image':<{w_img}}  rank  {'label':<{w_lab}}  prob")
  for i, path in enumerate(paths):
    if i in errs:
      lines.append(f"{path:<{w_img}}  -     ERROR: {_error_text(errs[i], path)}")
      continue
    for r, (lab, p) in enumerate(rows[i], 1):
      lines.append(f"{path if r == 1 else '':<{w_img}}  {r:<4d}  {lab:<{w_lab}}  {p:.4f}")
  return lines


def format_query(query: str, paths: Sequence[str], ok: Sequence[int], cos: np.ndarray,
                 probs: np.ndarray, errors: Sequence[Tuple[int, str]], k: Optional[int],
                 fmt: str) -> List[str]:
  """Output lines for query mode: images best first, then the unreadable ones."""
  order = np.argsort(-cos, kind="stable")
  if k is not None:
    order = order[:k]
  lines = []
  if fmt == "jsonl":
    for r, j in enumerate(order, 1):
      lines.append(json.dumps({"query": query, "rank": r, "image": paths[ok[j]],
                               "similarity": round(float(cos[j]), 6),
                               "prob": round(float(probs[j]), 6)}))
    for i, msg in errors:
      lines.append(json.dumps({"query": query, "image": paths[i],
                               "error": _error_text(msg, paths[i])}))
    return lines
  lines.append(f"query: {query}")
  lines.append("rank  similarity  prob    image")
  for r, j in enumerate(order, 1):
    lines.append(f"{r:<4d}  {cos[j]:>10.4f}  {probs[j]:.4f}  {paths[ok[j]]}")
  for i, msg in errors:
    lines.append(f"-     {'ERROR':>10s}  -       {paths[i]}: {_error_text(msg, paths[i])}")
  return lines


def main(argv: Sequence[str]) -> None:
  del argv
  pretrained_cli.list_if_asked()
  modes = [m for m in ("labels", "labels_file", "query") if FLAGS[m].value]
  if len(modes) != 1:
    raise app.UsageError("pass exactly one of --labels, --labels_file, --query")
  if not FLAGS.checkpoint and not FLAGS.pretrained:
    raise app.UsageError("--checkpoint (or --pretrained) is required")
  if not FLAGS.images:
    raise app.UsageError("--images is required (a directory, glob or file)")
  if FLAGS.top_k < 1:
    raise app.UsageError("--top_k must be >= 1")
  paths = list_images(FLAGS.images)
  if not paths:
    raise app.UsageError(f"no image files in {FLAGS.images}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # stderr is for per-file errors; -v 0 shows the gin

  found = pretrained_cli.resolve_from_flags()
  checkpoint = found.checkpoint if found else FLAGS.checkpoint
  gin_files = ([found.gin_file] if found else []) + list(FLAGS.gin_file or [])
  predictor = predictor_lib.FlipPredictor.from_checkpoint(
      checkpoint, gin_files, gin_bindings=FLAGS.gin_bindings,
      vocab_file=FLAGS.vocab_file, batch_size=FLAGS.batch_size)

  if FLAGS.query:
    text_emb = predictor.encode_texts([FLAGS.query])
  else:
    labels = list(FLAGS.labels) if FLAGS.labels else prompts.read_lines(FLAGS.labels_file)
    labels = [lab.strip() for lab in labels if lab.strip()]
    if not labels:
      raise app.UsageError("no labels given")
    class_emb = predictor.class_embeddings(labels, _templates(FLAGS.templates))

  ok, z, errors = embed_files(predictor, paths)
  if FLAGS.query:
    cos = (z @ text_emb.T)[:, 0]
    probs = predictor.probabilities(z, text_emb, axis=0)[:, 0] if len(ok) else cos
    k = FLAGS.top_k if FLAGS["top_k"].present else None
    lines = format_query(FLAGS.query, paths, ok, cos, probs, errors, k, FLAGS.format)
  else:
    probs = predictor.probabilities(z, class_emb)
    lines = format_labels(paths, ok, probs, errors, labels, FLAGS.top_k, FLAGS.format)
  print("\n".join(lines), flush=True)
  if not ok:
    raise gin_utils.Failed(f"none of the {len(paths)} images could be read")


if __name__ == "__main__":
  _define_flags()
  # A path without a checkpoint, a bad --pretrained or vocabulary: one line, exit status 2.
  gin_utils.run(main, bad_input=predictor_lib.LOAD_ERRORS)
