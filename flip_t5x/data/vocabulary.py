"""Lower-case BERT WordPiece as a `seqio.Vocabulary` (FLIP's text tokenizer).

Ids are the line indices of the vocabulary file ([PAD] on line 0 is the padding id); no EOS is
appended because FLIP's text tower pools position 0 (the first WordPiece). `vocab_size` is the
number of lines + 1, as in FLIP's configs (30,522-line BERT vocab -> 30,523).

The file is read at first use, not at construction. `vocab_file` None, the default, means the
vocabulary FLIP trained on, shipped in the package (`BERT_UNCASED_VOCAB_FILE`: BERT's uncased
WordPiece, 30,522 lines, the official repo's `vocab/vocab_bert_base.txt`). The tasks' vocabulary
follows the model file's VOCAB_FILE (`tasks.TaskConfig.vocab_file`).
"""
from __future__ import annotations

import functools
import hashlib
import os
from typing import Iterable, List, Optional, Sequence

from absl import logging
import seqio
import tensorflow as tf
import tensorflow_text as tf_text

ASSETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
# FLIP's text vocabulary (input_pipeline_laion.py: md5 64800d5d8528ce344256daf115d4965e).
BERT_UNCASED_VOCAB_FILE = os.path.join(ASSETS_DIR, "bert_uncased_wordpiece_vocab.txt")
BERT_UNCASED_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"


def file_md5(path: str) -> str:
  """Hex md5 of a file's bytes (any tf.io.gfile file system)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return hashlib.md5(f.read()).hexdigest()


def is_official_vocabulary(path: str) -> bool:
  """Whether `path` holds FLIP's vocabulary byte for byte (compared by md5, so any copy counts)."""
  return file_md5(path) == BERT_UNCASED_VOCAB_MD5


def warn_unless_official_vocabulary(path: str, what: str) -> bool:
  """Logs a warning when `what` uses another vocabulary than FLIP's; returns whether it is FLIP's.

  The released FLIP models were trained on BERT's uncased vocabulary: with other ids their text
  tower reads the wrong embeddings, and nothing fails.
  """
  if is_official_vocabulary(path):
    return True
  logging.warning(
      "%s: the vocabulary %s is not FLIP's (BERT uncased WordPiece, md5 %s, shipped as %s); the "
      "official models were trained on that file, so their text embeddings will be wrong with "
      "these ids. Leave VOCAB_FILE unset to use it.", what, path, BERT_UNCASED_VOCAB_MD5,
      BERT_UNCASED_VOCAB_FILE)
  return False


@functools.lru_cache(maxsize=8)
def _load_tokens(path: str) -> tuple:
  with tf.io.gfile.GFile(path, "r") as f:
    tokens = tuple(line.rstrip("\r\n") for line in f)
  if not tokens:
    raise ValueError(f"WordPiece vocabulary file is empty: {path}")
  return tokens


@functools.lru_cache(maxsize=8)
def _token_to_id(path: str) -> dict:
  return {t: i for i, t in enumerate(_load_tokens(path))}


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str, lower_case: bool) -> tf_text.FastBertTokenizer:
  """The tf-text tokenizer of a vocabulary file (built once per file, outside any tf.function)."""
  with tf.init_scope():
    # Duplicate lines keep their ids but are never produced (the tokenizer needs unique tokens).
    seen, vocab = set(), []
    for i, t in enumerate(_load_tokens(path)):
      vocab.append(t if t not in seen else f"[duplicate-line-{i}]")
      seen.add(t)
    return tf_text.FastBertTokenizer(
        vocab=vocab, suffix_indicator="##", max_bytes_per_word=100, token_out_type=tf.int64,
        unknown_token="[UNK]", no_pretokenization=False, support_detokenization=True,
        lower_case_nfd_strip_accents=lower_case)


class WordPieceVocabulary(seqio.Vocabulary):
  """Lower-casing BERT WordPiece (tensorflow-text FastBertTokenizer); ids = file line indices."""

  def __init__(self, vocab_file: Optional[str] = None, lower_case: bool = True):
    self._vocab_file = vocab_file
    self._lower_case = lower_case
    super().__init__(extra_ids=0)

  @property
  def vocab_file(self) -> str:
    return BERT_UNCASED_VOCAB_FILE if self._vocab_file is None else self._vocab_file

  @property
  def tokens(self) -> Sequence[str]:
    return _load_tokens(self.vocab_file)

  @property
  def _token_to_id(self) -> dict:
    return _token_to_id(self.vocab_file)

  @property
  def tf_tokenizer(self) -> tf_text.FastBertTokenizer:
    # Keyed by the file the vocabulary resolves to now (the tasks' follows VOCAB_FILE).
    return _tokenizer(self.vocab_file, self._lower_case)

  @property
  def eos_id(self) -> Optional[int]:
    return None

  @property
  def unk_id(self) -> Optional[int]:
    return self._token_to_id.get("[UNK]")

  @property
  def _base_vocab_size(self) -> int:
    return len(self.tokens) + 1

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """Scalar string -> int32 [n]; batched strings -> ragged int32 [b, None]."""
    s = tf.convert_to_tensor(s, tf.string)
    if s.shape.rank == 0:
      return tf.cast(self.tf_tokenizer.tokenize(tf.reshape(s, [1])).flat_values, tf.int32)
    return tf.cast(self.tf_tokenizer.tokenize(s), tf.int32)

  def _encode(self, s: str) -> Sequence[int]:
    return self._encode_tf(tf.constant(s)).numpy().tolist()

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., n] -> strings [...]; padding (0) is dropped."""
    ids = tf.convert_to_tensor(ids)
    ragged = tf.ragged.boolean_mask(ids, tf.not_equal(ids, self.pad_id)) if ids.shape.rank else ids
    if ids.shape.rank == 1:
      ragged = ragged[tf.newaxis]
      return self.tf_tokenizer.detokenize(tf.cast(ragged, tf.int64))[0]
    return self.tf_tokenizer.detokenize(tf.cast(ragged, tf.int64))

  def _decode(self, ids: Iterable[int]) -> str:
    words: List[str] = []
    tokens = self.tokens
    for i in ids:
      i = int(i)
      if i == self.pad_id:
        continue
      tok = tokens[i] if 0 <= i < len(tokens) else "[UNK]"
      if tok.startswith("##") and words:
        words[-1] += tok[2:]
      else:
        words.append(tok)
    return " ".join(words)

  def __eq__(self, other):
    return (isinstance(other, WordPieceVocabulary) and self._vocab_file == other._vocab_file and
            self._lower_case == other._lower_case)

  def __hash__(self):
    return hash((self._vocab_file, self._lower_case))

  def __str__(self) -> str:
    return f"WordPieceVocabulary(vocab_file={self._vocab_file!r}, lower_case={self._lower_case})"
