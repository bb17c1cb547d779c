"""Sequitur G2P's `g2p.py` with the two fixes its PyPI release (1.0.1668.30) needs here.

    python -m launch.sequitur_g2p --train lexicon --devel 5% --write-model model-1

Takes g2p.py's own arguments. `launch.baselines` runs it with PYTHONHASHSEED=0: with that and
the seed below, `--devel 5%` holds out the same words on every run.
"""
import ctypes
import os
import random
import runpy
import sys
import sysconfig

import numpy

SEED = 0


def keep_swig_types() -> None:
  """The release sets `thisown` on objects by hand, and each such object, when freed,
  releases SWIG's type-table capsule once more than it took it (fixed upstream after the
  release): millions of times in one training run. Once the capsule is freed SWIG forgets
  its types, and training dies a few EM iterations in ("'SwigPyObject' object has no
  attribute 'thisown'"). Adding 2**40 to the capsule's reference count keeps it alive for
  any run; it is meant to live as long as the process anyway."""
  import sequitur  # pylint: disable=import-outside-toplevel,unused-import  # loads SWIG's runtime
  import swig_runtime_data4  # pylint: disable=import-outside-toplevel
  capsule = swig_runtime_data4.type_pointer_capsule
  ctypes.c_ssize_t.from_address(id(capsule)).value += 1 << 40  # CPython: ob_refcnt comes first


def main() -> None:
  numpy.sometrue = numpy.any  # removed in NumPy 2, still called by the discount search
  keep_swig_types()
  random.seed(SEED)  # g2p.py shuffles the words before it holds out --devel N%
  script = os.path.join(sysconfig.get_path("scripts"), "g2p.py")
  sys.argv = [script] + sys.argv[1:]
  runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
  main()
