"""The CPU demo's data set: captioned Fashion-MNIST product photos plus a zero-shot split.

The library of `flip_t5x.demo_data` (its docstring shows the files `prepare` writes). The demo has
to show FLIP end to end without downloading anything, so it uses Fashion-MNIST as Debian packages
it (`dataset-fashion-mnist`, MIT): 70,000 real 28x28 grey product photos in 10 classes. Their
captions are generated from the label (`make_caption`: English templates, synonyms, adjectives):
synthetic text about real images, which teaches the text tower class words in varied phrasings.
Shards are written by `flip_t5x.data.shards`, the vocabulary learnt by
`flip_t5x.data.vocab_builder`; a completion marker makes a rerun with the same settings free.
"""
import dataclasses
import gzip
import json
import os
import random
import shutil
import time
from typing import List, Optional, Sequence, TextIO, Tuple

from absl import logging
import numpy as np
from PIL import Image

DEMO_DATA_VERSION = "1"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
APT_INSTALL = "apt-get install -y dataset-fashion-mnist"
MARKER = "demo_data_complete.json"
TRAIN_PREFIX = "demo"

# Natural names in Fashion-MNIST label order (T-shirt/top, Trouser, Pullover, ...).
FASHION_MNIST_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                       "sandal", "shirt", "sneaker", "bag", "ankle boot")
# Label ids in the shards and class_names.txt follow this sorted order, the order a
# folder reader that sorts its subfolders finds, so every convention agrees.
CLASS_NAMES = tuple(sorted(FASHION_MNIST_NAMES))

ZEROSHOT_TEMPLATES = (
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a product photo of a {}.",
    "a photo of the {}.",
    "a close-up photo of a {}.",
)

# (noun phrase, is plural). The first entry is the class name itself.
_NOUNS = {
    "t-shirt": [("t-shirt", False), ("tee", False), ("top", False), ("tank top", False),
                ("short-sleeved top", False), ("crew neck t-shirt", False)],
    "trouser": [("trouser", False), ("trousers", True), ("pants", True), ("jeans", True),
                ("slacks", True), ("chinos", True), ("leggings", True)],
    "pullover": [("pullover", False), ("sweater", False), ("jumper", False),
                 ("knit sweater", False), ("knitted pullover", False), ("turtleneck", False)],
    "dress": [("dress", False), ("gown", False), ("frock", False), ("sundress", False),
              ("maxi dress", False), ("evening dress", False)],
    "coat": [("coat", False), ("jacket", False), ("overcoat", False), ("parka", False),
             ("trench coat", False), ("rain jacket", False)],
    "sandal": [("sandal", False), ("sandals", True), ("flip-flops", True), ("slides", True),
               ("strappy sandals", True), ("heeled sandals", True)],
    "shirt": [("shirt", False), ("blouse", False), ("button-down shirt", False),
              ("collared shirt", False), ("flannel shirt", False), ("long-sleeved shirt", False)],
    "sneaker": [("sneaker", False), ("sneakers", True), ("trainers", True),
                ("running shoes", True), ("sports shoes", True), ("tennis shoes", True)],
    "bag": [("bag", False), ("handbag", False), ("purse", False), ("tote bag", False),
            ("backpack", False), ("shoulder bag", False), ("clutch", False)],
    "ankle boot": [("ankle boot", False), ("ankle boots", True), ("boots", True),
                   ("booties", True), ("chelsea boots", True), ("lace-up boots", True)],
}
# Pairs take "a pair of"; other plurals go bare.
_PAIRS = ("trouser", "sandal", "sneaker", "ankle boot")
_ADJECTIVES = {
    "t-shirt": ["casual", "cotton", "basic", "graphic", "oversized", "printed"],
    "trouser": ["slim", "wide-leg", "straight", "tailored", "denim", "high-waisted"],
    "pullover": ["warm", "cozy", "wool", "chunky", "knitted", "soft"],
    "dress": ["elegant", "short", "long", "sleeveless", "floral", "party"],
    "coat": ["warm", "long", "padded", "hooded", "wool", "winter"],
    "sandal": ["flat", "summer", "leather", "strappy", "open-toe", "beach"],
    "shirt": ["classic", "formal", "checked", "cotton", "slim-fit", "striped"],
    "sneaker": ["sporty", "lightweight", "canvas", "retro", "chunky", "running"],
    "bag": ["leather", "small", "large", "everyday", "quilted", "travel"],
    "ankle boot": ["leather", "suede", "heeled", "winter", "rugged", "platform"],
}
_GENERIC_ADJECTIVES = ["new", "vintage", "stylish", "cheap", "women's", "men's",
                       "second-hand", "designer", "comfortable", "trendy"]
# {x}: noun phrase with its determiner ("an oversized tee", "a pair of jeans");
# {y}: bare noun phrase ("oversized tee", "jeans").
_CAPTION_TEMPLATES = (
    "a photo of {x}.", "a black and white photo of {x}.", "a grayscale photo of {x}.",
    "a low resolution photo of {x}.", "a small photo of {x}.", "a product photo of {x}.",
    "a close-up photo of {x}.", "a photo of the {y}.", "product shot: {x}.",
    "{x} on a black background.", "close-up of {x}.", "{x}, front view.",
    "a catalogue picture of {x}.", "an online shop listing of {x}.", "{y} for sale.",
    "{y} for sale, barely used.", "my new {y}.", "I love my {y}.",
    "the {y} I bought yesterday.", "new arrivals: {y}.", "{y}.", "{x}",
    "best {y} of the season.", "{y}, size M.", "{y} in grey.",
    "there is {x} in this picture.", "a pixelated image of {x}.", "a thumbnail of {x}.",
    "fashion catalogue: {y}.", "{x} lying flat.", "selling {x}, good condition.",
    "what do you think of this {y}?", "a monochrome picture of {x}.",
)


@dataclasses.dataclass
class DemoData:
  """Where `prepare` put things, and whether it found them already there."""
  output_dir: str
  train_pattern: str
  train_files: List[str]
  num_train: int
  captions_file: str
  vocab_file: Optional[str]
  templates_file: str
  zeroshot_dir: str
  class_names_file: str
  num_eval: int
  cached: bool
  seconds: float

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))


def make_caption(class_name: str, rng: random.Random) -> str:
  """One random English caption for an image of `class_name`.

  The class name itself is used in about 40% of captions (so the zero-shot prompts,
  which use it, are in-distribution) and synonyms in the rest.
  """
  nouns = _NOUNS[class_name]
  noun, plural = nouns[0] if rng.random() < 0.4 else rng.choice(nouns)
  if rng.random() < 0.4:
    adjective = rng.choice(_ADJECTIVES[class_name] + _GENERIC_ADJECTIVES)
    noun = f"{adjective} {noun}"
  if plural:
    x = f"a pair of {noun}" if class_name in _PAIRS and rng.random() < 0.5 else noun
  else:
    x = f"{'an' if noun[0] in 'aeio' else 'a'} {noun}"
  caption = rng.choice(_CAPTION_TEMPLATES).format(x=x, y=noun)
  return caption[0].upper() + caption[1:] if rng.random() < 0.5 else caption


def _read_idx(path: str) -> np.ndarray:
  """Reads an (optionally gzipped) IDX file, the MNIST format."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  magic = int.from_bytes(data[:4], "big")
  if magic >> 8 != 0x08:  # 0x08 = unsigned bytes.
    raise ValueError(f"{path}: not a uint8 IDX file (magic {magic:#x})")
  ndim = magic & 0xFF
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str,
                       source_dir: str = FASHION_MNIST_DIR) -> Tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 28, 28], labels int64 [N] in CLASS_NAMES order)."""
  stem = {"train": "train", "test": "t10k"}[split]
  paths = []
  for kind in ("images-idx3", "labels-idx1"):
    candidates = [os.path.join(source_dir, f"{stem}-{kind}-ubyte{ext}") for ext in (".gz", "")]
    found = [p for p in candidates if os.path.exists(p)]
    if not found:
      raise FileNotFoundError(
          f"Fashion-MNIST not found: no {candidates[0]}. Install it with\n"
          f"  {APT_INSTALL}\n(as root or with sudo), or pass --source_dir.")
    paths.append(found[0])
  images, labels = _read_idx(paths[0]), _read_idx(paths[1])
  if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
    raise ValueError(f"unexpected Fashion-MNIST shapes {images.shape} / {labels.shape}")
  remap = np.array([CLASS_NAMES.index(n) for n in FASHION_MNIST_NAMES], np.int64)
  return images, remap[labels]


def prepare_image(image: np.ndarray, image_size: int = 32) -> np.ndarray:
  """28x28 grey -> image_size x image_size grey: pad to 32 with black, then resize."""
  if image_size == image.shape[0]:
    return image
  pad = (32 - image.shape[0]) // 2
  image = np.pad(image, pad)
  if image_size != 32:
    image = np.asarray(Image.fromarray(image).resize((image_size, image_size),
                                                     Image.Resampling.BICUBIC))
  return image


def build_demo_vocab(captions_file: str, output: str, vocab_size: int) -> bool:
  """Builds the demo's WordPiece vocabulary with flip_t5x.data.vocab_builder, the one vocab builder.

  Returns False (and logs why) when that module is not available, so the images and
  captions are still prepared; the data set then counts as incomplete and the next run
  builds it again.
  """
  try:
    from flip_t5x.data import vocab_builder  # pylint: disable=g-import-not-at-top  # Heavy deps.
  except ImportError as e:
    logging.warning("no %s: flip_t5x.data.vocab_builder is not importable (%s)", output, e)
    return False
  tokens = vocab_builder.build_vocab(vocab_builder.caption_dataset(captions=captions_file),
                                     vocab_size)
  vocab_builder.write_vocab(tokens, output)
  return True


def _settings(num_train, num_eval_per_class, image_size, seed, examples_per_shard, vocab_size):
  return {"version": DEMO_DATA_VERSION, "num_train": num_train,
          "num_eval_per_class": num_eval_per_class, "image_size": image_size, "seed": seed,
          "examples_per_shard": examples_per_shard, "vocab_size": vocab_size}


def _write_text(path: str, lines: Sequence[str]) -> None:
  with open(path, "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in lines)


def prepare(output_dir: str,
            num_train: int = 20000,
            num_eval_per_class: int = 100,
            image_size: int = 32,
            seed: int = 0,
            examples_per_shard: int = 5000,
            vocab_size: int = 1000,
            source_dir: str = FASHION_MNIST_DIR,
            progress_stream: Optional[TextIO] = None) -> DemoData:
  """Builds the demo data set in `output_dir` unless it is already there with these settings.

  Args:
    output_dir: where everything goes (the layout is in `flip_t5x.demo_data`'s docstring).
    num_train: training examples (random Fashion-MNIST train images, at most 60,000).
    num_eval_per_class: zero-shot images per class (first ones of the test split, at
      most 1,000).
    image_size: side in pixels of every image.
    seed: picks the training images and their captions.
    examples_per_shard: records per TFRecord shard.
    vocab_size: target size of vocab.txt; 0 skips building it.
    source_dir: folder of the Fashion-MNIST idx(.gz) files.
    progress_stream: where to show the shard writer's progress; None shows none.

  Returns:
    A DemoData with the paths; `cached` says whether nothing had to be done.
  """
  start = time.time()
  settings = _settings(num_train, num_eval_per_class, image_size, seed, examples_per_shard,
                       vocab_size)
  marker = os.path.join(output_dir, MARKER)
  train_dir = os.path.join(output_dir, "train")
  zeroshot_dir = os.path.join(output_dir, "zeroshot")
  captions_file = os.path.join(output_dir, "captions.txt")
  vocab_file = os.path.join(output_dir, "vocab.txt") if vocab_size else None
  templates_file = os.path.join(output_dir, "templates.txt")
  class_names_file = os.path.join(zeroshot_dir, "class_names.txt")

  def result(cached, train_files, num_eval):
    return DemoData(
        output_dir=output_dir, train_pattern=os.path.join(train_dir, f"{TRAIN_PREFIX}-*.tfrecord"),
        train_files=train_files, num_train=num_train, captions_file=captions_file,
        vocab_file=vocab_file, templates_file=templates_file, zeroshot_dir=zeroshot_dir,
        class_names_file=class_names_file, num_eval=num_eval, cached=cached,
        seconds=round(time.time() - start, 2))

  if os.path.exists(marker):
    with open(marker, encoding="utf-8") as f:
      done = json.load(f)
    # Paths in the marker are relative, so the folder can be moved or mounted elsewhere.
    if (done.get("settings") == settings
        and all(os.path.exists(os.path.join(output_dir, p)) for p in done["files"])
        and (not vocab_file or os.path.exists(vocab_file))):
      logging.info("demo data already in %s (%s); nothing to do", output_dir, MARKER)
      return result(True, [os.path.join(output_dir, p) for p in done["train_files"]],
                    done["num_eval"])
    logging.info("rebuilding %s: settings or files differ from %s", output_dir, MARKER)

  if not 1 <= num_train <= 60000:
    raise ValueError(f"num_train must be in [1, 60000], got {num_train}")
  if not 1 <= num_eval_per_class <= 1000:
    raise ValueError(f"num_eval_per_class must be in [1, 1000], got {num_eval_per_class}")
  # Imported here, not at the top: it loads TensorFlow, which a cached run never needs.
  from flip_t5x.data import shards  # pylint: disable=g-import-not-at-top
  train_images, train_labels = load_fashion_mnist("train", source_dir)
  test_images, test_labels = load_fashion_mnist("test", source_dir)

  # Clear what an earlier build left; the marker goes first so a crash leaves none.
  os.makedirs(output_dir, exist_ok=True)
  for path in (marker, captions_file, templates_file, vocab_file):
    if path and os.path.exists(path):
      os.remove(path)
  for path in (train_dir, zeroshot_dir):
    shutil.rmtree(path, ignore_errors=True)

  rng = random.Random(seed)
  chosen = np.random.default_rng(seed).permutation(len(train_labels))[:num_train]
  captions = [make_caption(CLASS_NAMES[train_labels[i]], rng) for i in chosen]
  items = [shards.Item(image=prepare_image(train_images[i], image_size), caption=caption,
                       source=f"fashion-mnist train image {i}",
                       extra={"label": int(train_labels[i])})
           for i, caption in zip(chosen, captions)]  # a list: the progress line knows the total
  summary = shards.write_shards(items, train_dir, prefix=TRAIN_PREFIX,
                                examples_per_shard=examples_per_shard, image_format="jpeg",
                                progress_stream=progress_stream)
  if summary.written != num_train:
    raise RuntimeError(
        f"wrote {summary.written} of {num_train} training examples: {summary.skipped}")
  _write_text(captions_file, captions)

  files = [os.path.join(zeroshot_dir, name) for name in CLASS_NAMES]
  for label, name in enumerate(CLASS_NAMES):
    os.makedirs(os.path.join(zeroshot_dir, name))
    for i in np.flatnonzero(test_labels == label)[:num_eval_per_class]:
      path = os.path.join(zeroshot_dir, name, f"{i:05d}.png")
      Image.fromarray(prepare_image(test_images[i], image_size)).convert("RGB").save(path)
  _write_text(class_names_file, CLASS_NAMES)
  _write_text(templates_file, ZEROSHOT_TEMPLATES)
  if vocab_file and not build_demo_vocab(captions_file, vocab_file, vocab_size):
    vocab_file = None

  num_eval = num_eval_per_class * len(CLASS_NAMES)
  files += summary.files + [captions_file, templates_file, class_names_file]
  files += [vocab_file] if vocab_file else []
  tmp = marker + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump({"settings": settings,
               "files": [os.path.relpath(p, output_dir) for p in files],
               "train_files": [os.path.relpath(p, output_dir) for p in summary.files],
               "num_eval": num_eval}, f, indent=1)
  os.replace(tmp, marker)
  out = result(False, summary.files, num_eval)
  logging.info("demo data ready in %s after %.1f s", output_dir, out.seconds)
  return out
