"""`FlipModel`: FLIP under t5x's `BaseModel` contract.

The same object runs under upstream `t5x.train`/`t5x.eval` and under `flip_t5x.train` /
`flip_t5x.eval`: `BaseModel` below is t5x's interface, written here so no t5x is needed (t5x only
calls these methods; it never checks the class). Masking is a training-time
regulariser driven by `dropout_rng`, exactly as t5x passes randomness: no rng, no masking. The
same rng feeds the network's 'dropout' collection (dropout, drop-path; off in FLIP's recipes), so
training with it is stochastic and everything called without it is deterministic.
"""
from __future__ import annotations

import abc
from typing import Any, Dict, Mapping, MutableMapping, Optional, Tuple

import clu.metrics as clu_metrics
import jax
import jax.numpy as jnp

from flip_t5x import losses
from flip_t5x import network
from flip_t5x.data.feature_converters import ImageTextFeatureConverter

Array = jax.Array
PyTree = Any


class BaseModel(abc.ABC):
  """t5x's `models.BaseModel` interface: what t5x.train / t5x.eval and flip_t5x call."""

  FEATURE_CONVERTER_CLS: Any

  def __init__(self, optimizer_def: Any):
    self.optimizer_def = optimizer_def

  @abc.abstractmethod
  def loss_fn(self, params, batch, dropout_rng):
    ...

  def eval_fn(self, params, batch):
    return self.loss_fn(params=params, batch=batch, dropout_rng=None)

  def predict_batch(self, params, batch, rng=None):
    return self.predict_batch_with_aux(params, batch, rng=rng)[0]

  @abc.abstractmethod
  def predict_batch_with_aux(self, params, batch, rng=None):
    ...

  @abc.abstractmethod
  def score_batch(self, params, batch, return_intermediates=False):
    ...

  @abc.abstractmethod
  def get_initial_variables(self, rng, input_shapes, input_types=None):
    ...


class FlipModel(BaseModel):
  """Contrastive image-text model with FLIP's random patch masking while training."""

  FEATURE_CONVERTER_CLS = ImageTextFeatureConverter

  def __init__(self, module: network.FlipTwoTower, optimizer_def: Any = None,
               mask_ratio: float = 0.5):
    super().__init__(optimizer_def=optimizer_def)
    network.num_kept_patches(1000, mask_ratio)  # validates the ratio early
    self.module = module
    self.mask_ratio = float(mask_ratio)

  # ---------------------------------------------------------------- variables
  def input_shapes(self, batch_size: int = 1) -> Dict[str, Tuple[int, ...]]:
    """Model-feature shapes (`images` [B, S, S, 3], `texts` [B, L]) from the network's sizes."""
    m = self.module
    return {"images": (batch_size, m.image.image_size, m.image.image_size, 3),
            "texts": (batch_size, m.text.max_length)}

  def check_feature_lengths(self, task_feature_lengths: Mapping[str, Any]) -> None:
    """Refuses task lengths other than the network's sizes (ValueError naming the macros).

    The image tower takes only its own size, and a shorter text length would cut every caption
    and prompt: the data must come at the model's `IMAGE_SIZE` and `TEXT_LENGTH`.
    """
    m = self.module
    want = {"image": m.image.image_size, "targets": m.text.max_length}
    got = {k: (task_feature_lengths or {}).get(k) for k in want}
    if got != want:
      raise ValueError(f"TASK_FEATURE_LENGTHS {dict(task_feature_lengths or {})} differ from the "
                       f"model's sizes {want} (IMAGE_SIZE, TEXT_LENGTH): leave "
                       f"TASK_FEATURE_LENGTHS to the run files, which bind the model's")

  def get_initial_variables(self, rng: Array, input_shapes: Mapping[str, Tuple[int, ...]],
                            input_types: Optional[Mapping[str, Any]] = None
                            ) -> MutableMapping[str, PyTree]:
    """`params` and `params_axes` (t5x's partitioner reads the latter).

    t5x.train / t5x.eval derive `input_shapes` from the task lengths: a mismatch with the
    network's sizes ends here, before any step runs.
    """
    del input_types  # images are float, texts int, whatever the pipeline says
    self.check_feature_lengths({"image": input_shapes["images"][1],
                                "targets": input_shapes["texts"][1]})
    # Parameters do not depend on the batch size: trace with one example.
    images = jnp.zeros((1,) + tuple(input_shapes["images"][1:]), jnp.float32)
    texts = jnp.zeros((1,) + tuple(input_shapes["texts"][1:]), jnp.int32)
    variables = self.module.init({"params": rng}, images, texts)
    return dict(variables)

  # ------------------------------------------------------------------ forward
  def encode_images(self, params: PyTree, images: Array, mask_ratio: float = 0.0,
                    rng: Optional[Array] = None) -> Array:
    return self.module.apply({"params": params}, images, mask_ratio, rng,
                             method=network.FlipTwoTower.encode_image)

  def encode_texts(self, params: PyTree, texts: Array) -> Array:
    return self.module.apply({"params": params}, texts, method=network.FlipTwoTower.encode_text)

  def _forward(self, params: PyTree, batch: Mapping[str, Array], dropout_rng: Optional[Array]):
    """Training (masking, dropout) with a dropout_rng; deterministic and unmasked without."""
    training = dropout_rng is not None
    return self.module.apply({"params": params}, batch["images"], batch["texts"],
                             mask_ratio=self.mask_ratio if training else 0.0, rng=dropout_rng,
                             deterministic=not training,
                             rngs={"dropout": dropout_rng} if training else None)

  # ----------------------------------------------------------- t5x contract
  def loss_fn(self, params: PyTree, batch: Mapping[str, Array], dropout_rng: Optional[Array]
              ) -> Tuple[Array, Mapping[str, clu_metrics.Metric]]:
    """Symmetric contrastive loss over the (global) batch, and clu metrics."""
    z_img, z_txt, scale = self._forward(params, batch, dropout_rng)
    loss, logits = losses.contrastive_loss(z_img, z_txt, scale)
    i2t, t2i = losses.in_batch_accuracy(logits)
    metrics = {
        "loss": clu_metrics.Average.from_model_output(loss),
        "temperature": clu_metrics.Average.from_model_output(1.0 / scale),
        "logit_scale": clu_metrics.Average.from_model_output(jnp.log(scale)),
        "accuracy/image_to_text": clu_metrics.Average.from_model_output(i2t),
        "accuracy/text_to_image": clu_metrics.Average.from_model_output(t2i),
    }
    return loss, metrics

  def eval_fn(self, params: PyTree, batch: Mapping[str, Array]
              ) -> Tuple[Array, Mapping[str, clu_metrics.Metric]]:
    """The loss without masking (FLIP evaluates on every patch)."""
    return self.loss_fn(params, batch, dropout_rng=None)

  def predict_batch_with_aux(self, params: PyTree, batch: Mapping[str, Array],
                             rng: Optional[Array] = None, **kwargs
                             ) -> Tuple[Array, Mapping[str, Array]]:
    """Embeddings, unmasked: predictions are [image embedding | text embedding] per example.

    Concatenating both lets one seqio evaluator pass embed images and prompt texts alike (a
    zero-shot metric picks the half it needs); aux has each half and the logit scale.
    """
    del rng, kwargs
    z_img, z_txt, scale = self._forward(params, batch, None)
    aux = {"image_embedding": z_img, "text_embedding": z_txt,
           "logit_scale": jnp.broadcast_to(scale, (z_img.shape[0],))}
    return jnp.concatenate([z_img, z_txt], axis=-1), aux

  def score_batch(self, params: PyTree, batch: Mapping[str, Array],
                  return_intermediates: bool = False) -> Any:
    """Per-example image-text score: scaled cosine similarity of each image with its caption."""
    z_img, z_txt, scale = self._forward(params, batch, None)
    scores = scale * jnp.sum(z_img * z_txt, axis=-1)
    if return_intermediates:
      return scores, {"image_embedding": z_img, "text_embedding": z_txt}
    return scores
