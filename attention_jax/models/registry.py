"""`build_model(config.model)`: a model variant is a config value.

The config names the model (`name`) and sets any of its dataclass fields;
a misspelt field or an unknown name fails here, naming the key, before
anything is compiled. Dtypes may be given as strings ('float32', 'bfloat16').
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp

from attention_jax.models.image import ImageRNN, ImageTransformer
from attention_jax.models.rnn_seq2seq import RNNSeq2Seq
from attention_jax.models.speech import SpeechSeq2Seq
from attention_jax.models.transformer import DecoderOnlyLM, EncoderDecoderTransformer

MODELS: dict[str, type[nn.Module]] = {
    "rnn_seq2seq": RNNSeq2Seq,
    "transformer": EncoderDecoderTransformer,
    "lm": DecoderOnlyLM,
    "speech": SpeechSeq2Seq,
    "image_rnn": ImageRNN,
    "image_transformer": ImageTransformer,
}
_DTYPE_FIELDS = ("dtype", "param_dtype")


def model_fields(cls: type[nn.Module]) -> list[str]:
  """The config keys a model accepts (its dataclass fields, less Flax's own)."""
  return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]


def build_model(config: Mapping[str, Any]) -> nn.Module:
  """A model from `config.model`: `{'name': ..., <field>: <value>, ...}`."""
  config = dict(config)
  name = config.pop("name", None)
  if name not in MODELS:
    raise ValueError(f"model.name={name!r} is unknown; known: {', '.join(MODELS)}")
  cls = MODELS[name]
  known = model_fields(cls)
  for key in config:
    if key not in known:
      raise ValueError(f"model.{key} is not a field of {cls.__name__} (model.name={name!r}); "
                       f"known: {', '.join(known)}")
  for key, value in config.items():  # a config read back from JSON (predict) has lists:
    if isinstance(value, list):       # modules are static jit arguments, so hashable
      config[key] = tuple(value)
  for key in _DTYPE_FIELDS:
    if isinstance(config.get(key), str):
      try:
        config[key] = jnp.dtype(config[key])
      except TypeError:
        raise ValueError(f"model.{key}={config[key]!r} is not a dtype") from None
  return cls(**config)
