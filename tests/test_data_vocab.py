"""WordPiece vocabulary: the shipped BERT uncased file, FLIP's official tokenisation, build_vocab."""
import io
import os
import subprocess
import sys

import gin
import numpy as np
from PIL import Image
import pytest
import seqio
import tensorflow as tf
import tensorflow_text as tf_text

import tasks
import test_data_pipeline as dp
from flip_t5x.data import vocab_builder
from flip_t5x.data import vocabulary
from flip_t5x.data.feature_converters import ImageTextFeatureConverter
from test_train_helpers import ROOT as REPO

BERT_VOCAB = vocabulary.BERT_UNCASED_VOCAB_FILE
TEXT_LENGTH = 32  # FLIP's aug.txt.max_len

# Captions where tokenisers tend to disagree: accents and case folding, CJK (one token per
# character), emoji and ZWJ sequences ([UNK]), full-width forms and ligatures (NFKC), URLs and
# punctuation, control and zero-width characters, words over 100 bytes, and captions longer
# than 32 tokens (truncation).
CAPTIONS = [
    "A photo of a DOG.", "Café NAÏVE résumé, Ångström & Œuvre", "e\u0301 combining acute",
    "東京タワーの夜景 北京天安门 서울의 밤", "a dog 🐶🐕\u200d🦺 on a 🛹! 👍🏽", "ＦＵＬＬ－ＷＩＤＴＨ ＡＢＣ １２３ ｶﾀｶﾅ",
    "ﬁne ﬂour ﬀ ﬅ Æsop straße ß", "https://example.com/a?b=c&d=e#frag www.foo-bar.org/x_y.html",
    "İstanbul ΣΊΣΥΦΟΣ Ωμέγα Привет МИР", "tab\tnew\nline\u00a0nbsp\u200bzero\u200dwidth",
    "Ǆemal ǅ ㎞ ① ½ Ⅻ ℃ ™ ©", "\x00ctrl\x07chars\x1f end", "مرحبا بالعالم हिन्दी ภาษาไทย",
    "don't I'm rock'n'roll 3.14 $5 100% <b>&amp;</b>", "x" * 150 + " cat",
    " ".join(["word"] * 40), "supercalifragilisticexpialidocious " * 12,
    "LAION-400M caption: 2 x Vintage Mid-Century Teak Chairs (1960s) | eBay",
]


@pytest.fixture(scope="module")
def bert():
  return vocabulary.WordPieceVocabulary(BERT_VOCAB)


@pytest.fixture(scope="module")
def official_tokenizer():
  """input_pipeline_laion.py's tokenizer: tensorflow_text.BertTokenizer, lower_case, int32."""
  return tf_text.BertTokenizer(BERT_VOCAB, lower_case=True, token_out_type=tf.int32)


def official_ids(tokenizer, caption, cls_token=None):
  """input_pipeline_laion.tfds_preprocess_text on one caption (its max_len is 32).

  The caption is tokenised, truncated and zero-padded by `pad_model_inputs`; no [CLS]/[SEP]
  unless `cls_token` is given, which takes the first of the 32 positions.
  """
  max_len = TEXT_LENGTH + (-1 if cls_token is not None else 0)
  padded, _ = tf_text.pad_model_inputs(tokenizer.tokenize(tf.constant(caption)), max_len)
  ids = padded[0].numpy().tolist()
  return ([cls_token] if cls_token is not None else []) + ids


def padded(ids, length=TEXT_LENGTH):
  ids = list(ids)[:length]
  return ids + [0] * (length - len(ids))


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


def test_vocab_file_from_gin(bert, tmp_path):
  gin.clear_config()
  try:
    lazy = tasks.output_features()["targets"].vocabulary  # the tasks', built before gin is parsed
    assert lazy.vocab_file == BERT_VOCAB  # nothing bound: FLIP's vocabulary, shipped
    assert vocabulary.WordPieceVocabulary().vocab_file == BERT_VOCAB  # the library's default
    other = tmp_path / "vocab.txt"
    other.write_text("[PAD]\n[UNK]\ndog\n")
    gin.parse_config(dp.BINDING_GIN + f'VOCAB_FILE = "{other}"')
    assert lazy.vocab_file == str(other) and lazy.encode("dog") == [2]
    assert vocabulary.WordPieceVocabulary().vocab_file == BERT_VOCAB  # gin reaches the tasks only
    gin.parse_config(f'tasks.TaskConfig.vocab_file = "{BERT_VOCAB}"')
    assert lazy.vocab_size == 30523 and lazy.encode("dog") == [3899]  # the binding wins
    gin.clear_config()
    gin.parse_config(dp.BINDING_GIN + 'VOCAB_FILE = ""')
    with pytest.raises(ValueError, match="VOCAB_FILE is empty"):
      lazy.encode("dog")
  finally:
    gin.clear_config()


def test_shipped_vocabulary_is_flips():
  """The package ships the official repo's vocab/vocab_bert_base.txt, byte for byte."""
  assert vocabulary.file_md5(BERT_VOCAB) == "64800d5d8528ce344256daf115d4965e"
  assert vocabulary.is_official_vocabulary(BERT_VOCAB)
  with open(BERT_VOCAB, encoding="utf-8") as f:
    lines = f.read().splitlines()
  assert len(lines) == 30522
  assert lines[:1] == ["[PAD]"] and lines[100:104] == ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]


@pytest.mark.e2e
def test_setup_py_installs_the_vocabulary(tmp_path):
  """setup.py's package_data copies the vocabulary into a build of the package."""
  subprocess.run([sys.executable, "setup.py", "-q", "build_py", f"--build-lib={tmp_path}"],
                 cwd=REPO, check=True, capture_output=True)
  built = tmp_path / "flip_t5x" / "data" / "assets" / os.path.basename(BERT_VOCAB)
  assert vocabulary.file_md5(str(built)) == vocabulary.BERT_UNCASED_VOCAB_MD5


@pytest.mark.parametrize("caption", CAPTIONS)
def test_ids_equal_flips_official_tokenisation(bert, official_tokenizer, caption):
  """Our tokenizer, truncated and padded to 32 as the pipeline does, gives the official ids."""
  want = official_ids(official_tokenizer, caption)
  assert padded(bert.encode_tf(tf.constant([caption]))[:, :TEXT_LENGTH].to_list()[0]) == want
  assert padded(bert.encode(caption)) == want


def test_official_cls_token_is_ours_shifted(bert, official_tokenizer):
  """Official aug.txt.cls_token: [CLS] then the caption truncated to 31 tokens.

  `network.TextTowerConfig.cls_token_id` builds the same ids in the text tower: [CLS], then the
  first 31 of the pipeline's 32 ids.
  """
  cls = bert.tokens.index("[CLS]")
  assert cls == 101
  for caption in CAPTIONS:
    ours = padded(bert.encode(caption))
    assert official_ids(official_tokenizer, caption, cls_token=cls) == [cls] + ours[:-1]


def _jpeg(seed):
  pixels = np.random.default_rng(seed).integers(0, 255, (40, 48, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, "JPEG")
  return buf.getvalue()


@pytest.mark.usefixtures("clean_gin_and_counters")
def test_training_pipeline_texts_equal_flips(tmp_path, official_tokenizer):
  """Shards -> task -> feature converter, with no vocabulary bound: `texts` are FLIP's ids."""
  with tf.io.TFRecordWriter(str(tmp_path / "00000.tfrecord")) as w:
    for i, caption in enumerate(CAPTIONS):
      feat = {"jpg": [_jpeg(i)], "txt": [caption.encode()], "key": [b"%09d" % i]}
      w.write(tf.train.Example(features=tf.train.Features(feature={
          k: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)) for k, v in feat.items()
      })).SerializeToString())
  gin.parse_config(dp.BINDING_GIN + f'TRAIN_DATA_PATTERN = "{tmp_path}/*.tfrecord"')
  ds = seqio.get_dataset("flip_img2dataset", {"image": 32, "targets": TEXT_LENGTH},
                         dataset_split="train", shuffle=False, num_epochs=1,
                         feature_converter=ImageTextFeatureConverter())
  texts = [ex["texts"].tolist() for ex in ds.as_numpy_iterator()]
  # Captions that are only control characters would be skipped as empty; none of these are.
  assert texts == [official_ids(official_tokenizer, c) for c in CAPTIONS]


def test_other_vocabulary_warns(caplog, tmp_path):
  copy = tmp_path / "copy.txt"
  copy.write_bytes(open(BERT_VOCAB, "rb").read())
  assert vocabulary.warn_unless_official_vocabulary(str(copy), "import")  # same bytes: no warning
  assert "not FLIP's" not in caplog.text
  other = tmp_path / "other.txt"
  other.write_text(open(BERT_VOCAB, encoding="utf-8").read().replace("[CLS]", "[cls]"))
  assert not vocabulary.warn_unless_official_vocabulary(str(other), "import")
  assert f"import: the vocabulary {other} is not FLIP's" in caplog.text


@pytest.mark.e2e
def test_import_checkpoint_warns_about_another_vocabulary(tmp_path):
  """The importer names a vocabulary the official models were not trained on (fresh process)."""
  other = tmp_path / "vocab.txt"
  other.write_text("[PAD]\n[UNK]\ndog\n")
  proc = subprocess.run(
      [sys.executable, "-m", "flip_t5x.import_checkpoint", f"--source={tmp_path}/none",
       "--gin_file=gin_configs/models/flip_tiny.gin", f"--gin.VOCAB_FILE='{other}'", "--dry_run"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
  assert f"the vocabulary {other} is not FLIP's" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.e2e
def test_build_vocab(tmp_path):
  captions = tmp_path / "captions.txt"
  words = ["dog", "cat", "running", "jumping", "photo", "sunset", "beach", "red", "green"]
  rng = np.random.default_rng(0)
  captions.write_text("\n".join(" ".join(rng.choice(words, 5)) for _ in range(300)) + "\n\n")
  ds = vocab_builder.caption_dataset(str(captions))
  tokens = vocab_builder.build_vocab(ds, vocab_size=200)
  assert tokens[:5] == list(vocab_builder.RESERVED_TOKENS)
  assert "dog" in tokens and "sunset" in tokens
  out = tmp_path / "vocab.txt"
  subprocess.run([sys.executable, "-m", "flip_t5x.build_vocab", f"--captions={captions}",
                  "--vocab_size=200", f"--output={out}"], check=True, cwd=REPO,
                 capture_output=True)
  vocab = vocabulary.WordPieceVocabulary(str(out))
  ids = vocab.encode("Dog running on the BEACH")
  assert 0 not in ids and vocab.decode(ids).startswith("dog running")
  assert vocab.vocab_size == len(out.read_text().splitlines()) + 1
