"""Timing, statistics, the results JSON and the markdown table.

Every benchmark hands `measure` a few zero-argument callables that run one
repeat to completion (JAX results blocked on, torch is synchronous on CPU).
They are warmed up first (compilation and first-touch allocation excluded),
then timed in alternating order, A B A B ..., reversed every other round, so
a slow phase of a shared machine hits every implementation alike.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import socket
import statistics
import time
from typing import Any, Callable, Mapping

PAUSE_S = 0.02  # between timed calls: lets the other framework's spinning threads go to sleep


def on_cpu() -> bool:
  import jax  # pylint: disable=import-outside-toplevel
  return jax.default_backend() == "cpu"


def have_torch() -> bool:
  """Whether the PyTorch peers run: the `bench` extra is installed and JAX is on the CPU.

  The peers are CPU programs (the extra's CPU build of torch): against ours on a GPU or TPU
  they would measure two devices, not two frameworks, so there ours run alone."""
  if not on_cpu():
    return False
  try:
    import torch  # noqa: F401  pylint: disable=unused-import,import-outside-toplevel
  except ImportError:
    return False
  return True


def compute_dtype():
  """float32 on a CPU (the peers' dtype; bfloat16 matmuls are no faster there); bfloat16 on
  a GPU or TPU, the dtype training runs in there and the one cuDNN's attention needs."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return jnp.float32 if on_cpu() else jnp.bfloat16


def skip_note(error: Exception) -> str:
  """A row's note for an implementation that could not run: the error's first line."""
  return f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"


@dataclasses.dataclass
class Row:
  """One implementation on one case, with its timings and what it is compared with."""
  benchmark: str  # 'attention', 'rnn_attention_seq2seq', ...
  case: str  # e.g. 'T=2048 causal fwd+bwd'
  impl: str  # e.g. 'jax blockwise', 'torch sdpa'
  times_s: list[float]  # empty: not run (extra says why)
  baseline: str | None = None  # impl of the row this one is divided by (same case)
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)  # tokens/s, MFU, memory...

  @property
  def median_s(self) -> float | None:
    return statistics.median(self.times_s) if self.times_s else None

  @property
  def min_s(self) -> float | None:
    return min(self.times_s) if self.times_s else None

  @property
  def max_s(self) -> float | None:
    return max(self.times_s) if self.times_s else None


def measure(fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 1,
            budget_s: float | None = None, min_repeats: int = 3) -> dict[str, list[float]]:
  """Seconds per call of each function, `repeats` times, alternating between them.

  Args:
    fns: name -> callable running one complete repeat.
    repeats: timed calls per function.
    warmup: untimed calls per function first (the first one compiles).
    budget_s: if set, fewer repeats (down to `min_repeats`) when the warm-up
      says all of them together would take longer than this.
  """
  names = list(fns)
  warm = {}
  for name in names:
    for _ in range(warmup):
      start = time.perf_counter()
      fns[name]()
      warm[name] = time.perf_counter() - start
  if budget_s is not None and warm:
    per_round = sum(warm.values()) + PAUSE_S * len(names)
    repeats = max(min_repeats, min(repeats, int(budget_s / per_round)))
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(repeats):
    for name in (names if r % 2 == 0 else names[::-1]):
      time.sleep(PAUSE_S)
      start = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - start)
  return times


def ratio(rows: list[Row], row: Row) -> float | None:
  """median(row) / median(its baseline row in the same case), or None."""
  if row.baseline is None or not row.times_s:
    return None
  for other in rows:
    if (other.benchmark, other.case, other.impl) == (row.benchmark, row.case, row.baseline):
      return row.median_s / other.median_s if other.times_s else None
  return None


def _ms(seconds: float) -> str:
  ms = seconds * 1e3
  return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def markdown(rows: list[Row], extra_columns: Mapping[str, Mapping[str, str]] | None = None) -> str:
  """One markdown table per benchmark: median, min-max (ms), ratio to the baseline row.

  `extra_columns` maps a benchmark to {key in Row.extra: column title}.
  """
  out = []
  for bench in dict.fromkeys(r.benchmark for r in rows):
    extra = dict((extra_columns or {}).get(bench, {}))
    header = ["case", "implementation", "median ms", "min-max ms", "ratio", "vs"] + list(
        extra.values())
    lines = [f"### {bench}", "", "| " + " | ".join(header) + " |",
             "|" + "|".join(["---"] * len(header)) + "|"]
    for row in (r for r in rows if r.benchmark == bench):
      value = ratio(rows, row)
      timed = bool(row.times_s)
      cells = [row.case, row.impl, _ms(row.median_s) if timed else "not run",
               f"{_ms(row.min_s)}-{_ms(row.max_s)}" if timed else "",
               "" if value is None else f"{value:.2f}", (row.baseline or "") if timed else ""]
      cells += [_format(row.extra.get(key)) for key in extra]
      lines.append("| " + " | ".join(cells) + " |")
    out.append("\n".join(lines))
  return "\n\n".join(out) + "\n"


def _format(value) -> str:
  if value is None:
    return ""
  if isinstance(value, float):
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
  return str(value)


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_info(threads: Mapping[str, Any]) -> dict[str, Any]:
  """Where and with what the benchmarks ran."""
  import jax
  import jaxlib
  info = {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": jaxlib.__version__, "jax_backend": jax.default_backend(),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "threads": dict(threads)}
  info["torch"] = None  # the peers' version: none where they do not run (no torch, or off the CPU)
  if have_torch():
    import torch  # pylint: disable=import-outside-toplevel
    info["torch"] = torch.__version__
  return info


def row_dict(rows: list[Row], row: Row) -> dict[str, Any]:
  return {"benchmark": row.benchmark, "case": row.case, "impl": row.impl,
          "median_s": row.median_s, "min_s": row.min_s, "max_s": row.max_s,
          "times_s": row.times_s, "baseline": row.baseline, "ratio": ratio(rows, row),
          **({"extra": row.extra} if row.extra else {})}


def write_results(path: str, rows: list[Row], info: Mapping[str, Any],
                  settings: Mapping[str, Any]) -> str:
  """The results JSON (machine, settings, every row with its raw times); returns the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  doc = {"machine": dict(info), "settings": dict(settings),
         "rows": [row_dict(rows, row) for row in rows]}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(doc, f, indent=1, default=str)
    f.write("\n")
  os.replace(tmp, path)
  return path


def results_path(directory: str, host: str | None = None,
                 date: datetime.date | None = None) -> str:
  """`<directory>/<YYYY-MM-DD>-<host>.json`."""
  date = date or datetime.date.today()
  host = (host or socket.gethostname()).replace(os.sep, "_")
  return os.path.join(directory, f"{date.isoformat()}-{host}.json")
