"""WordPiece vocabulary against the BERT uncased vocabulary, and the build_vocab command."""
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import tensorflow as tf

from flip_t5x import build_vocab
from flip_t5x.data import vocabulary

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BERT_VOCAB = os.path.join(REPO, "..", "shared", "reference", "bert_uncased_wordpiece_vocab.txt")


@pytest.fixture
def bert():
  if not os.path.exists(BERT_VOCAB):
    pytest.skip("BERT vocabulary not found at ../shared/reference")
  return vocabulary.WordPieceVocabulary(BERT_VOCAB)


def _reference_wordpiece(text, tokens):
  """Plain-Python BERT uncased tokenisation (ASCII inputs): whitespace/punct split + greedy longest match."""
  index = {t: i for i, t in enumerate(tokens)}
  words, cur = [], ""
  for ch in text.lower():
    if ch.isspace():
      words.append(cur)
      cur = ""
    elif not ch.isalnum():
      words += [cur, ch]
      cur = ""
    else:
      cur += ch
  words.append(cur)
  ids = []
  for w in filter(None, words):
    start, pieces = 0, []
    while start < len(w):
      end = len(w)
      while end > start:
        piece = ("##" if start else "") + w[start:end]
        if piece in index:
          pieces.append(index[piece])
          break
        end -= 1
      if end == start:
        pieces = [index["[UNK]"]]
        break
      start = end
    ids += pieces
  return ids


def test_known_bert_ids(bert):
  assert bert.vocab_size == 30523
  assert bert.encode("Hello World!") == [7592, 2088, 999]
  assert bert.encode("A photo of a DOG.") == [1037, 6302, 1997, 1037, 3899, 1012]
  assert bert.unk_id == 100 and bert.pad_id == 0 and bert.eos_id is None


@pytest.mark.parametrize("text", [
    "a bad photo of the crane.", "An origami Great White Shark in a video game",
    "itap of a tench, tinca tinca", "Unaffable jaywalkers, 2022 (HDR) #sunset", ""])
def test_matches_reference_wordpiece(bert, text):
  want = _reference_wordpiece(text, bert.tokens)
  assert bert.encode(text) == want
  assert bert.encode_tf(tf.constant(text)).numpy().tolist() == want
  if want:
    assert bert.decode(want + [0, 0]) == bert.decode_tf(tf.constant(want + [0, 0])).numpy().decode()


def test_accents_and_batches(bert):
  assert bert.encode("Café NAÏVE") == bert.encode("cafe naive")
  batch = bert.encode_tf(tf.constant(["a cat", "a dog on a mat"]))
  assert batch.to_list() == [bert.encode("a cat"), bert.encode("a dog on a mat")]


def test_vocab_file_from_gin(bert):
  gin.clear_config()
  try:
    lazy = vocabulary.WordPieceVocabulary()  # created before gin is parsed, like task features
    gin.parse_config(f'VOCAB_FILE = "{BERT_VOCAB}"')
    assert lazy.vocab_size == 30523 and lazy.encode("dog") == [3899]
    gin.clear_config()
    with pytest.raises(ValueError, match="VOCAB_FILE"):
      vocabulary.WordPieceVocabulary().encode("dog")
  finally:
    gin.clear_config()


def test_build_vocab(tmp_path):
  captions = tmp_path / "captions.txt"
  words = ["dog", "cat", "running", "jumping", "photo", "sunset", "beach", "red", "green"]
  rng = np.random.default_rng(0)
  captions.write_text("\n".join(" ".join(rng.choice(words, 5)) for _ in range(300)) + "\n\n")
  ds = build_vocab.caption_dataset(str(captions))
  tokens = build_vocab.build_vocab(ds, vocab_size=200)
  assert tokens[:5] == list(build_vocab.RESERVED_TOKENS)
  assert "dog" in tokens and "sunset" in tokens
  out = tmp_path / "vocab.txt"
  subprocess.run([sys.executable, "-m", "flip_t5x.build_vocab", f"--captions={captions}",
                  "--vocab_size=200", f"--output={out}"], check=True, cwd=REPO,
                 capture_output=True)
  vocab = vocabulary.WordPieceVocabulary(str(out))
  ids = vocab.encode("Dog running on the BEACH")
  assert 0 not in ids and vocab.decode(ids).startswith("dog running")
  assert vocab.vocab_size == len(out.read_text().splitlines()) + 1
