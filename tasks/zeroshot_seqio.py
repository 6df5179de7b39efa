"""Eval tasks that upstream `t5x.eval` (seqio's Evaluator) can score: zero-shot and retrieval.

For each zero-shot task of `tasks` (`flip_imagenet1k_zeroshot`, `flip_folder_zeroshot`,
`flip_tfds_zeroshot`) this registers `<name>_seqio`, whose dataset is

  1. one example per (class, template) prompt: `targets` = the prompt's WordPiece ids,
     `image` = zeros, `label` = the class, `is_prompt` = True;
  2. then the base task's images: `targets` = empty (all padding), `label`, `is_prompt` = False.

The evaluator embeds every row once with `FlipModel.predict_batch_with_aux`; the task's
`postprocess_fn` turns each target into `{label, is_prompt}` and its metric
(`flip_t5x.evaluation.metrics.zeroshot_metric`) builds the class embeddings from the prompt rows and
scores the image rows, giving the same top-1/top-5 as `flip_t5x.eval`.

    python -m t5x.eval --gin_file=gin_configs/models/flip_vit_l16.gin \
      --gin_file=gin_configs/runs/eval_zeroshot_imagenet.gin \
      --gin.MIXTURE_OR_TASK_NAME=\"flip_imagenet1k_zeroshot_seqio\" \
      --gin.CHECKPOINT_PATH=\"...\" --gin.EVAL_OUTPUT_DIR=\"...\"

Templates are the base task source's (`tasks.ZeroShotSource.templates`: ZEROSHOT_TEMPLATES); the
lengths are the model's (runs/eval.gin binds TASK_FEATURE_LENGTHS from IMAGE_SIZE and TEXT_LENGTH;
without an image length the prompt rows are refused). The metric reads the embeddings from
`aux_values` (seqio decodes plain predictions with the text vocabulary, which would turn them into
strings). The prompt rows carry zero images of the eval size; runs/eval.gin turns the evaluator's
in-memory cache off (`utils.DatasetConfig.use_memory_cache`: it would keep every row's image, see
docs/performance.md, Measurements) and sets `seqio.JSONLogger.write_n_results = 0` (else every row's
embeddings are written). `flip_t5x.eval` is the faster way to the same numbers.

It also registers `flip_img2dataset_retrieval`: captioned img2dataset shards
(RETRIEVAL_DATA_PATTERN, splits `validation` and `test`) with eval preprocessing (resize + center
crop) and image<->text recall@1/5/10 as its metric; `flip_t5x.eval` with
`flip_eval.eval_options.mode = 'retrieval'` (EVAL_MODE) reads it too.
"""
from __future__ import annotations

import functools
from typing import Callable, List, Mapping, Optional, Sequence

import seqio
import tensorflow as tf

import tasks
from flip_t5x.data import preprocessors
from flip_t5x.data import prompts
from flip_t5x.data import sources
from flip_t5x.evaluation import metrics as seqio_metrics

SUFFIX = "_seqio"
RETRIEVAL_TASK = "flip_img2dataset_retrieval"
BASE_TASKS = ("flip_imagenet1k_zeroshot", "flip_folder_zeroshot", "flip_tfds_zeroshot")


def class_names(task_name: str) -> List[str]:
  """Label-ordered class names of a zero-shot task (`tasks.zeroshot_class_names`)."""
  return tasks.zeroshot_class_names(task_name)


def prepend_prompts(dataset: tf.data.Dataset,
                    sequence_length: Optional[Mapping[str, int]] = None,
                    output_features: Optional[Mapping[str, seqio.Feature]] = None, *,
                    class_names_fn: Callable[[], Sequence[str]],
                    templates_fn: Callable[[], Sequence[str]] = prompts.templates
                    ) -> tf.data.Dataset:
  """Zero-shot image examples -> prompt examples followed by the image examples."""
  names = list(class_names_fn())
  template_list = list(templates_fn())
  if not names or not template_list:
    raise ValueError(f"zero-shot prompts need class names and templates, got {len(names)} "
                     f"names and {len(template_list)} templates")
  size = preprocessors.image_size(sequence_length)  # refuses TASK_FEATURE_LENGTHS = None
  image_shape = tf.TensorShape([size, size, 3])
  length = (sequence_length or {}).get("targets")
  vocab = output_features["targets"].vocabulary

  texts = [t.format(c) for c in names for t in template_list]
  labels = [i for i, _ in enumerate(names) for _ in template_list]

  def prompt_example(text, label):
    ids = tf.cast(vocab.encode_tf(text), tf.int32)
    if length:
      ids = ids[:length]
    return {"image": tf.zeros(image_shape, tf.float32), "targets": ids,
            "targets_pretokenized": text, "label": label, "is_prompt": tf.constant(True)}

  def image_example(ex):
    return {"image": tf.ensure_shape(ex["image"], image_shape),
            "targets": tf.zeros([0], tf.int32), "targets_pretokenized": tf.constant(""),
            "label": tf.cast(ex["label"], tf.int32), "is_prompt": tf.constant(False)}

  prompt_ds = tf.data.Dataset.from_tensor_slices(
      (tf.constant(texts), tf.constant(labels, tf.int32))).map(prompt_example)
  return prompt_ds.concatenate(dataset.map(image_example))


def register_zeroshot_seqio_task(base_task_name: str, name: Optional[str] = None,
                                 class_names_fn: Optional[Callable[[], Sequence[str]]] = None,
                                 templates_fn: Optional[Callable[[], Sequence[str]]] = None
                                 ) -> seqio.Task:
  """Registers the evaluator-ready variant of zero-shot task `base_task_name`.

  `class_names_fn` and `templates_fn` default to the base task source's `class_names` and
  `templates` (FLIP's 7 templates when the source has none).
  """
  base = seqio.get_mixture_or_task(base_task_name)
  name = name or base_task_name + SUFFIX
  if class_names_fn is None:
    class_names_fn = functools.partial(class_names, base_task_name)
  if templates_fn is None:
    templates_fn = getattr(base.source, "templates", prompts.templates)
  return seqio.TaskRegistry.add(
      name,
      source=base.source,
      output_features=base.output_features,
      preprocessors=list(base.preprocessors) + [functools.partial(
          prepend_prompts, class_names_fn=class_names_fn, templates_fn=templates_fn)],
      postprocess_fn=seqio_metrics.zeroshot_postprocess,
      metric_fns=[seqio_metrics.zeroshot_metric],
      shuffle_buffer_size=None)


for _base in BASE_TASKS:
  if _base + SUFFIX not in seqio.TaskRegistry.names():
    register_zeroshot_seqio_task(_base)


def retrieval_source(c: tasks.TaskConfig) -> sources.Img2DatasetSource:
  pattern = c.retrieval_data_pattern
  if not pattern:
    raise ValueError("flip_img2dataset_retrieval needs RETRIEVAL_DATA_PATTERN = "
                     "\"/path/to/eval_shards/*.tfrecord\" in gin (img2dataset output).")
  return sources.Img2DatasetSource(pattern, splits=("validation", "test"), counter="eval",
                                   read=c.read_options())


if RETRIEVAL_TASK not in seqio.TaskRegistry.names():
  seqio.TaskRegistry.add(
      RETRIEVAL_TASK,
      source=tasks.ConfiguredSource(retrieval_source, ("validation", "test"),
                                    performs_internal_shuffling=True, arbitrary_sharding=False),
      output_features=tasks.output_features(),
      preprocessors=[functools.partial(tasks.preprocess, train=False)],
      metric_fns=[seqio_metrics.retrieval_metric],
      shuffle_buffer_size=None)
