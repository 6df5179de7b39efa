"""OpenCLIP's loading interface over an exported directory (`python -m flip_t5x.export_torch`).

    model, preprocess_train, preprocess_val = create_model_and_transforms(DIR)
    tokenizer = get_tokenizer(DIR)

The model and transforms need torch, torchvision and numpy only; the tokenizer is FLIP's own
(`flip_t5x.data.vocabulary`, tensorflow-text's WordPiece), so its ids are the training
pipeline's. Paths may carry OpenCLIP's `local-dir:` prefix.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from flip_t5x.pytorch import model as model_lib
from flip_t5x.pytorch import transforms as transforms_lib

CONFIG_FILE = "flip_config.json"  # as flip_t5x.pytorch.convert writes them
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.txt"
FORMAT = "flip_t5x.pytorch/1"
_PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _directory(path: str) -> str:
  path = os.fspath(path)
  return path[len("local-dir:"):] if path.startswith("local-dir:") else path


def read_config(path: str) -> Dict[str, Any]:
  """The export's `flip_config.json`; a directory without one is a FileNotFoundError naming it."""
  config_path = os.path.join(_directory(path), CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{_directory(path)} is not a flip_t5x PyTorch export: no "
                            f"{CONFIG_FILE} (write one with python -m flip_t5x.export_torch)")
  with open(config_path, encoding="utf-8") as f:
    config = json.load(f)
  if config.get("format") != FORMAT:
    raise ValueError(f"{config_path}: format {config.get('format')!r}, expected {FORMAT!r}")
  return config


def create_model(path: str, precision: str = "fp32", device: Union[str, torch.device] = "cpu",
                 output_dict: Optional[bool] = None) -> model_lib.FlipCLIP:
  """The exported model, weights loaded, in eval mode."""
  from safetensors import torch as safetensors_torch  # pylint: disable=g-import-not-at-top
  if precision not in _PRECISIONS:
    raise ValueError(f"precision must be one of {sorted(_PRECISIONS)}, got {precision!r}")
  config = read_config(path)
  model = model_lib.FlipCLIP(**config["model_cfg"], output_dict=bool(output_dict))
  weights = safetensors_torch.load_file(os.path.join(_directory(path), WEIGHTS_FILE))
  model.load_state_dict(weights)
  return model.to(device=device, dtype=_PRECISIONS[precision]).eval()


def create_model_and_transforms(path: str, precision: str = "fp32",
                                device: Union[str, torch.device] = "cpu",
                                output_dict: Optional[bool] = None
                                ) -> Tuple[model_lib.FlipCLIP, Any, Any]:
  """(model, preprocess_train, preprocess_val), as `open_clip.create_model_and_transforms`."""
  model = create_model(path, precision, device, output_dict)
  train, val = transforms_lib.image_transforms(read_config(path)["preprocess_cfg"])
  return model, train, val


class Tokenizer:
  """Texts -> LongTensor [N, context_length] of FLIP's WordPiece ids, 0-padded or cut."""

  def __init__(self, vocabulary: Any, context_length: int):
    self.vocabulary = vocabulary  # a flip_t5x.data.vocabulary.WordPieceVocabulary
    self.context_length = int(context_length)

  def __call__(self, texts: Union[str, Sequence[str]],
               context_length: Optional[int] = None) -> torch.Tensor:
    from flip_t5x.data import prompts  # pylint: disable=g-import-not-at-top
    texts = [texts] if isinstance(texts, str) else list(texts)
    length = int(context_length or self.context_length)
    # Each text is its own prompt ("{}"): the zero-shot prompts' tokenization, ids 0-padded.
    ids = prompts.prompt_token_ids(texts, ["{}"], self.vocabulary, length)[:, 0]
    return torch.from_numpy(ids.astype("int64"))


def get_tokenizer(path: str, context_length: Optional[int] = None) -> Tokenizer:
  """FLIP's tokenizer over the export's vocabulary, as `open_clip.get_tokenizer`."""
  from flip_t5x.data import vocabulary as vocabulary_lib  # pylint: disable=g-import-not-at-top
  config = read_config(path)["tokenizer_cfg"]
  vocab = vocabulary_lib.WordPieceVocabulary(
      os.path.join(_directory(path), config["vocab_file"]), lower_case=config["lower_case"])
  return Tokenizer(vocab, context_length or config["context_length"])
