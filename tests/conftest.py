"""Test-wide set-up: JAX's persistent compilation cache, so reruns skip XLA compiles.

The cache lives outside the clone (it survives a fresh CI checkout on the same
machine) and is keyed by jax/jaxlib version and program, so it can never serve
a stale executable. Override the place with JAX_COMPILATION_CACHE_DIR.
"""
import os

import jax

_CACHE_DIR = os.environ.get(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(os.path.expanduser("~"), ".cache", "attention_jax", "jax"),
)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
# Small test programs compile in well under a second; cache them all.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
