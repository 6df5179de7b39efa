"""The TFDS zero-shot tasks (`flip_tfds_zeroshot`, `flip_imagenet1k_zeroshot`) on TFDS's mock data.

`tfds.testing.mock_data` serves random examples with the real data set's features (encoded
images, labels, class names) without the data, so the tasks' real TFDS source, preprocessing and
`flip_t5x.eval.zeroshot_evaluate` run here as on the real ImageNet, and the accuracy is checked
against a brute-force computation on the same images.
"""

import gin
import jax
import numpy as np
import pytest
import seqio
import tensorflow_datasets as tfds

import tasks  # registers the tasks  # noqa: F401
from flip_t5x.evaluation import zeroshot as zeroshot_eval
from flip_t5x.data import prompts
from flip_t5x.data import vocabulary as vocabulary_lib
import test_train_helpers as h

LENGTHS = {"image": 32, "targets": 16}
TEMPLATES = ["a photo of a {}.", "a {}."]

pytestmark = pytest.mark.slow  # each test scores a whole (mock) task


@pytest.fixture(scope="module")
def model_and_params():
  model = h.gin_model()
  params = model.get_initial_variables(jax.random.PRNGKey(0), {"images": (1, 32, 32, 3),
                                                               "texts": (1, 16)})["params"]
  return model, params


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "photo", "of", "."]
  words += ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
            "truck", "goldfish", "tench"]
  path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
  path.write_text("\n".join(words) + "\n")
  return vocabulary_lib.WordPieceVocabulary(str(path))


def bruteforce_top1(model, params, vocab, task_name, class_names):
  """Top-1 (%) from the task's own examples, class by class and image by image."""
  ds = seqio.get_mixture_or_task(task_name).get_dataset(LENGTHS, split="validation",
                                                          shuffle=False)
  examples = list(ds.as_numpy_iterator())
  # Compiled: run op by op, a thousand classes one at a time would be most of the test's time.
  encode_texts, encode_images = jax.jit(model.encode_texts), jax.jit(model.encode_images)
  classifiers = []
  for name in class_names:
    ids = np.zeros((len(TEMPLATES), LENGTHS["targets"]), np.int32)
    for t, template in enumerate(TEMPLATES):
      tokens = vocab.encode(template.format(name))[:LENGTHS["targets"]]
      ids[t, :len(tokens)] = tokens
    z = np.asarray(encode_texts(params, ids), np.float64)
    z = (z / np.linalg.norm(z, axis=1, keepdims=True)).mean(0)
    classifiers.append(z / np.linalg.norm(z))
  hits = 0
  for ex in examples:
    z = np.asarray(encode_images(params, ex["image"][None]), np.float64)[0]
    hits += int(np.argmax([np.dot(z, c) for c in classifiers]) == ex["label"])
  return 100.0 * hits / len(examples), len(examples)


def test_flip_tfds_zeroshot_on_mock_cifar10(model_and_params, vocab, clean_gin_and_counters):
  model, params = model_and_params
  gin.parse_config(["tasks.TaskConfig.zeroshot_tfds_name = 'cifar10'",
                    "tasks.TaskConfig.zeroshot_tfds_split = 'test'"])
  with tfds.testing.mock_data(num_examples=12):
    class_names = tasks.zeroshot_class_names("flip_tfds_zeroshot")
    assert class_names == tfds.builder("cifar10").info.features["label"].names
    result = zeroshot_eval.zeroshot_evaluate(
        model, params, task_name="flip_tfds_zeroshot", split="validation",
        feature_lengths=LENGTHS, batch_size=8, templates=TEMPLATES, vocabulary=vocab)
    top1, n = bruteforce_top1(model, params, vocab, "flip_tfds_zeroshot", class_names)
  assert (result["num_examples"], result["num_classes"], result["num_templates"]) == (12, 10, 2)
  assert n == 12
  assert result["top1"] == pytest.approx(top1)


def test_flip_imagenet1k_zeroshot_on_mock_imagenet2012(model_and_params, vocab,
                                                        clean_gin_and_counters):
  """The README's ImageNet task: CLIP's 1,000 class names in TFDS label order, FLIP's templates."""
  model, params = model_and_params
  with tfds.testing.mock_data(num_examples=10):
    class_names = tasks.zeroshot_class_names("flip_imagenet1k_zeroshot")
    assert class_names == prompts.imagenet_class_names() and len(class_names) == 1000
    assert class_names[:2] == ["tench", "goldfish"]
    result = zeroshot_eval.zeroshot_evaluate(
        model, params, task_name="flip_imagenet1k_zeroshot", split="validation",
        feature_lengths=LENGTHS, batch_size=8, templates=TEMPLATES, vocabulary=vocab)
    top1, n = bruteforce_top1(model, params, vocab, "flip_imagenet1k_zeroshot", class_names)
  assert (result["num_examples"], result["num_classes"]) == (10, 1000) and n == 10
  assert result["top1"] == pytest.approx(top1)
