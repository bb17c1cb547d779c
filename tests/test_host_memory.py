"""glibc keeps freed memory for reuse after `host_memory.keep_freed_memory()`: a large buffer
allocated, touched and freed twice faults its pages in once, not twice (measured in a fresh
process, since the setting changes the process's allocator)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Through libc itself: NumPy asks for huge pages on large arrays, XLA's buffers do not.
PROBE = """
import ctypes, resource
from attention_jax import host_memory
kept = host_memory.keep_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
def touched_faults(nbytes=96 << 20):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  buf = libc.malloc(nbytes)
  ctypes.memset(buf, 1, nbytes)
  libc.free(buf)
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
touched_faults()
print(kept, touched_faults())
"""


def _probe(**env):
  out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       cwd=ROOT, env=dict(os.environ, **env), timeout=120, check=True)
  kept, faults = out.stdout.split()
  return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_a_freed_buffer_is_reused_without_faulting_its_pages_in_again():
  kept, reused = _probe()
  assert kept and reused < 100, reused  # the second buffer is the first one's pages
  kept, fresh = _probe(ATTENTION_JAX_MALLOC="system")  # glibc's defaults: mmap, then munmap
  # A fault per page: 24,576 of 4 KiB (or 48 of 2 MiB where huge pages are always on).
  assert not kept and fresh >= 48, fresh
