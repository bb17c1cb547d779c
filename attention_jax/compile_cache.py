"""JAX's persistent compilation cache for the command-line entry points.

Reruns, sweep trials and repeated `predict` calls compile the same programs; the cache
keeps them across processes, keyed by the jax/jaxlib version and the program, so it never
serves a stale executable. $JAX_COMPILATION_CACHE_DIR and
$JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS, when set, win.
"""
import os

import jax

DEFAULT_DIR = os.path.join(os.path.expanduser("~"), ".cache", "attention_jax", "jax")
# JAX caches only programs that took a second to compile; a CLI run's decoding and
# metric programs take 0.1-0.5 s each and there are dozens of them (predict: ~3 s).
MIN_COMPILE_SECS = 0.1


def enable() -> None:
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", DEFAULT_DIR)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
