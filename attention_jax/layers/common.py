"""Small pieces shared by the layers and models."""
from __future__ import annotations

from typing import Any

import flax.linen as nn


def dense(features: int, axes: tuple[str, str], *, dtype: Any, param_dtype: Any,
          name: str | None = None, use_bias: bool = True) -> nn.Dense:
  """A Dense layer whose kernel carries logical axes `axes` = (input, output), bias (output,)."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name,
      kernel_init=nn.with_logical_partitioning(nn.initializers.lecun_normal(), axes),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), axes[1:]))
