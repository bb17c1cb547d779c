"""Host memory for the command-line entry points: keep what XLA's CPU runtime frees.

XLA's CPU executables allocate their temporary buffers at every run: tens of megabytes for a
G2P RNN training step. glibc serves an allocation above its mmap threshold (at most 32 MB),
or one that a thread's arena (64 MB heaps) cannot hold, with a fresh `mmap`, and unmaps it
on free, so every step faults in new pages: about 28,000 page faults a step of the hidden-256
G2P RNN, 16.7 s of kernel time in 300 steps (BENCHMARKS.md, "host memory"). With one arena,
no mmap and a high trim threshold, freed buffers stay in the heap and the next step reuses
them: 1.3 s, and the same losses to the last digit.

$ATTENTION_JAX_MALLOC=system leaves glibc's defaults; elsewhere than glibc this does nothing.
"""
import ctypes
import os
import sys

ENV = "ATTENTION_JAX_MALLOC"
# mallopt parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
SETTINGS = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 1 << 30))


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to reuse freed memory (call before the first computation); True if
  it did. Threads started before keep the arena they have."""
  if os.environ.get(ENV) == "system" or not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # no C library symbols to look up, or no mallopt
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return all([mallopt(param, value) == 1 for param, value in SETTINGS])
