"""Zero-shot tasks: ImageNet-1K through tfds mock data, a folder tree, class names and templates."""
import os

import gin
import jax
import numpy as np
from PIL import Image
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

import tasks
import test_data_pipeline as dp
from flip_t5x import eval as flip_eval
from flip_t5x import models
from flip_t5x import network
from flip_t5x.data import feature_converters
from flip_t5x.data import preprocessors
from flip_t5x.data import prompts
from flip_t5x.data import vocabulary
from flip_t5x.evaluation import datasets
from flip_t5x.evaluation import zeroshot as zeroshot_eval

S, L = 32, 8


@pytest.fixture
def vocab_file(tmp_path):
  tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "the", "cat", "dog",
            "red", "fox", "."]
  path = tmp_path / "vocab.txt"
  path.write_text("\n".join(tokens) + "\n")
  return str(path)


pytestmark = pytest.mark.usefixtures("clean_gin_and_counters")


def _converter():
  return feature_converters.ImageTextFeatureConverter(
      passthrough_features={"label": seqio.FeatureConverter.FeatureSpec(dtype=tf.int32, rank=0)})


def test_assets():
  names = prompts.imagenet_class_names()
  assert len(names) == 1000 and len(set(names)) == 998
  assert names[0] == "tench" and names.count("missile") == 2  # CLIP list: "missile", "sunglasses" twice
  assert len(prompts.templates("80")) == 80 and len(prompts.templates("7")) == 7
  assert prompts.templates() == prompts.templates("7")  # FLIP's default
  # The zero-shot tasks' templates (flip_t5x.eval, the periodic zero-shot, the *_seqio tasks).
  assert datasets.task_templates("flip_folder_zeroshot") == prompts.templates("7")
  gin.parse_config(dp.BINDING_GIN + 'ZEROSHOT_TEMPLATES = "80"')
  assert datasets.task_templates("flip_folder_zeroshot") == prompts.templates("80")
  assert prompts.templates() == prompts.templates("7")  # gin reaches the tasks only
  gin.clear_config()
  gin.parse_config('tasks.TaskConfig.zeroshot_templates = "7"')
  assert len(datasets.task_templates("flip_imagenet1k_zeroshot")) == 7
  with pytest.raises(ValueError, match="template set"):
    prompts.templates("12")


def test_prompt_token_ids(vocab_file):
  vocab = vocabulary.WordPieceVocabulary(vocab_file)
  ids = prompts.prompt_token_ids(["cat", "red fox"], ["a photo of the {}.", "{}"], vocab, L)
  assert ids.shape == (2, 2, L) and ids.dtype == np.int32
  assert vocab.decode(ids[1, 0]) == "a photo of the red fox ."
  assert ids[0, 1].tolist() == [9] + [0] * (L - 1)


def test_imagenet_zeroshot_with_mock_data(vocab_file):
  gin.parse_config(dp.BINDING_GIN + f'VOCAB_FILE = "{vocab_file}"')
  with tfds.testing.mock_data(num_examples=6):
    ds = seqio.get_dataset("flip_imagenet1k_zeroshot",
                           task_feature_lengths={"image": S, "targets": L, "label": 1},
                           dataset_split="validation", shuffle=False, num_epochs=1,
                           feature_converter=_converter())
    examples = list(ds.as_numpy_iterator())
    test_split = list(seqio.get_mixture_or_task("flip_imagenet1k_zeroshot").get_dataset(
        {"image": S, "targets": L}, split="test", shuffle=False).as_numpy_iterator())
  assert len(examples) == 6 == len(test_split)
  names = prompts.imagenet_class_names()
  vocab = vocabulary.WordPieceVocabulary(vocab_file)
  for ex in examples:
    assert ex["images"].shape == (S, S, 3) and ex["images"].dtype == np.float32
    assert ex["label"].dtype == np.int32 and 0 <= ex["label"] < 1000
    assert ex["texts"].tolist() == (vocab.encode(names[ex["label"]]) + [0] * L)[:L]
  assert preprocessors.kept_count("eval") == 12


@pytest.mark.slow
def test_folder_zeroshot(tmp_path, vocab_file):
  root = tmp_path / "images"
  rng = np.random.default_rng(0)
  for c, cls in enumerate(["cat", "dog", "red_fox"]):
    os.makedirs(root / cls)
    for i in range(2 + c):
      a = (rng.random((40 + 10 * i, 50, 3)) * 255).astype(np.uint8)
      Image.fromarray(a).save(root / cls / f"{i}.{'jpg' if i % 2 else 'png'}")
  (root / "dog" / "notes.md").write_text("not an image")
  (root / "dog" / "broken.jpg").write_bytes(b"")
  os.symlink(root / "nowhere.jpg", root / "cat" / "gone.jpg")  # listed, but cannot be read
  gin.parse_config(dp.BINDING_GIN + f'VOCAB_FILE = "{vocab_file}"\nZEROSHOT_FOLDER = "{root}"')
  assert tasks.zeroshot_class_names("flip_folder_zeroshot") == ["cat", "dog", "red fox"]
  ds = seqio.get_dataset("flip_folder_zeroshot",
                         task_feature_lengths={"image": S, "targets": L, "label": 1},
                         dataset_split="test", shuffle=False, num_epochs=1,
                         feature_converter=_converter())
  examples = list(ds.as_numpy_iterator())
  assert [int(e["label"]) for e in examples] == [0, 0, 1, 1, 1, 2, 2, 2, 2]
  assert preprocessors.skipped_counts("eval")["empty_image"] == 2  # counted, not dropped unseen
  vocab = vocabulary.WordPieceVocabulary(vocab_file)
  assert vocab.decode(examples[-1]["texts"]) == "red fox"
  # Two hosts see disjoint halves.
  parts = [list(seqio.get_mixture_or_task("flip_folder_zeroshot").get_dataset(
      {"image": S, "targets": L}, split="test", shuffle=False,
      shard_info=seqio.ShardInfo(i, 2)).as_numpy_iterator()) for i in range(2)]
  assert len(parts[0]) + len(parts[1]) == 9

  # Scored with a (random) tiny model, the eval's result and end table report the two images it
  # could not read instead of scoring fewer images silently.
  model = models.FlipModel(network.FlipTwoTower(
      image=network.ImageTowerConfig(image_size=S, patch_size=8, width=32, depth=1, num_heads=2),
      text=network.TextTowerConfig(vocab_size=vocab.vocab_size, max_length=L, width=32, depth=1,
                                   num_heads=2), embed_dim=16), mask_ratio=0.0)
  params = model.get_initial_variables(jax.random.PRNGKey(0), model.input_shapes())["params"]
  result = zeroshot_eval.zeroshot_evaluate(
      model, params, task_name="flip_folder_zeroshot", split="test",
      feature_lengths={"image": S, "targets": L}, batch_size=4, templates=["a photo of the {}."])
  assert result["num_examples"] == 9 and result["skipped"] == {"empty_image": 2}
  assert "skipped 2 unreadable images (not scored): empty_image 2" in flip_eval.summary_table(
      dict(result, mode="zeroshot"))

  names = tmp_path / "names.txt"
  names.write_text("dog\tdomestic dog\ncat\ttabby cat\nred_fox\tred fox\n")
  assert prompts.folder_classes(str(root), str(names)) == (
      ["dog", "cat", "red_fox"], ["domestic dog", "tabby cat", "red fox"])
  names.write_text("kitty\npuppy\nfox\n")
  assert prompts.folder_classes(str(root), str(names))[1] == ["kitty", "puppy", "fox"]


def test_folder_zeroshot_needs_a_root(vocab_file):
  gin.parse_config(dp.BINDING_GIN + f'VOCAB_FILE = "{vocab_file}"')
  with pytest.raises(ValueError, match="ZEROSHOT_FOLDER"):
    tasks.zeroshot_class_names("flip_folder_zeroshot")
