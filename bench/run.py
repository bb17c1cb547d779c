"""Run the benchmarks, write `bench/results/<date>-<host>.json`, print markdown tables.

    python -m bench.run                      # everything (about 17 minutes on a quiet 2-core machine)
    python -m bench.run --quick              # fewer repeats and shapes, for iteration
    python -m bench.run --only attention --only decode

The PyTorch peers need the `bench` extra (`pip install -e '.[bench]'`: the CPU
build of torch); without it (a GPU or TPU machine) ours run alone, with every
attention implementation the platform has.
Both frameworks get every core: torch.set_num_threads(os.cpu_count()), and
XLA:CPU's default, one Eigen/XNNPACK intra-op thread per core (there is no
supported setting to change it; XLA_FLAGS, if set, is recorded).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

BENCHMARKS = ("attention", "rnn_attention_seq2seq", "transformer_lm", "decode", "train_g2p_rnn",
              "train_g2p_transformer", "scaling")
# 1-minute load average above which another process is sharing the cores (ours adds ~1-2
# while it runs): torch's OpenMP threads then slow down far more than XLA's.
BUSY_LOAD = 2.5
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# Extra columns of each table: Row.extra key -> title.
COLUMNS = {
    "attention": {"tflops": "TFLOP/s", "peak_fraction": "of peak", "temp_mib": "XLA temp MiB",
                  "compiled_mib": "XLA total MiB", "peak_rss_mib": "peak RSS MiB",
                  "skipped": "note"},
    "rnn_attention_seq2seq": {"target_tokens_per_s": "target tokens/s",
                              "gflops": "matmul GFLOP/s"},
    "transformer_lm": {"tokens_per_s": "tokens/s", "mfu": "MFU", "hfu": "MFU+logits",
                       "gflops": "GFLOP/s", "skipped": "note"},
    "decode": {"speedup": "speed-up"},
    "train_g2p_rnn": {"steps_per_s": "steps/s", "target_tokens_per_s": "target tokens/s",
                      "step_only_ms": "step alone, same batches (ms)",
                      "overhead": "loop overhead", "overhead_no_eval": "without the eval",
                      "evaluations": "evaluations",
                      "train_step_compilations": "train_step compiles"},
    "train_g2p_transformer": {"steps_per_s": "steps/s", "target_tokens_per_s": "target tokens/s"},
    "scaling_attention": {"gflops": "GFLOP/s", "compiled_mib": "XLA total MiB",
                          "peak_rss_mib": "peak RSS MiB"},
    "scaling_g2p_batch": {"target_tokens_per_s": "target tokens/s"},
}


def set_threads() -> dict:
  """Equal threads on both sides; returns what was set, for the results JSON."""
  cores = os.cpu_count()
  threads = {"cores": cores, "xla_cpu": f"default: one intra-op thread per core ({cores})"}
  from bench import harness
  if not harness.on_cpu():
    import jax
    print(f"[bench] JAX's backend is {jax.default_backend()!r}: the PyTorch peers, CPU "
          "programs, are skipped; ours run alone", file=sys.stderr)
    return dict(threads, torch=None)
  try:
    import torch
  except ImportError:  # ours run alone
    print("[bench] torch is not installed: the PyTorch peers are skipped "
          "(pip install -e '.[bench]' adds them)", file=sys.stderr)
    return dict(threads, torch=None)
  torch.set_num_threads(cores)
  threads["torch_intra_op"] = torch.get_num_threads()
  threads["torch_inter_op"] = torch.get_num_interop_threads()
  return threads


def _train_g2p(family: str, repeats: int, budget: float) -> list:
  """The G2P training-step rows; for the RNN, the trainer loop's row after them."""
  from bench import train_g2p
  rows = train_g2p.run(family, repeats, budget)
  if family == "rnn":
    rows.append(train_g2p.loop_overhead())
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="fewer repeats and shapes")
  parser.add_argument("--only", action="append", choices=BENCHMARKS,
                      help="run only this benchmark (repeatable)")
  parser.add_argument("--out", default=RESULTS_DIR, help="directory of the results JSON")
  args = parser.parse_args(argv)
  threads = set_threads()

  import jax
  from attention_jax import compile_cache, host_memory
  from bench import harness

  kept = host_memory.keep_freed_memory()  # as the trainer runs; torch's allocations too

  # Compilation is excluded from the timings; the persistent cache only makes reruns start sooner.
  jax.config.update("jax_compilation_cache_dir", os.environ.get(
      "JAX_COMPILATION_CACHE_DIR", compile_cache.DEFAULT_DIR))
  repeats, budget = (3, 10.0) if args.quick else (7, 30.0)
  selected = args.only or list(BENCHMARKS)
  rows: list[harness.Row] = []
  started, load_before = time.time(), os.getloadavg()
  section_load = {}
  peak = None  # the matmul peak, measured once for attention's and the LM's fraction of it
  if {"attention", "transformer_lm"} & set(selected):
    from bench import transformer_lm
    peak = transformer_lm.matmul_peak(repeats)
  for name in BENCHMARKS:
    if name not in selected:
      continue
    t0 = time.time()
    section_load[name] = os.getloadavg()[0]
    print(f"[bench] {name} ... (load average {section_load[name]:.1f})", file=sys.stderr,
          flush=True)
    if section_load[name] > BUSY_LOAD:
      print(f"[bench] warning: the machine is busy (load average {section_load[name]:.1f} on "
            f"{os.cpu_count()} cores); timings, and torch's most, will suffer", file=sys.stderr)
    if name == "attention":
      from bench import attention
      rows += attention.run(repeats, budget, quick=args.quick, peak_flops=peak[1])
    elif name == "rnn_attention_seq2seq":
      from bench import rnn_seq2seq
      rows += rnn_seq2seq.run(repeats, budget)
    elif name == "transformer_lm":
      from bench import transformer_lm
      on_cpu = jax.default_backend() == "cpu"  # elsewhere: every implementation it has
      from bench import attention
      rows += transformer_lm.run(repeats, budget, peak=peak, implementations=(
          (transformer_lm.IMPLEMENTATION,) if on_cpu else attention.implementations()))
    elif name == "decode":
      from bench import decode
      rows += decode.run(repeats, budget)
    elif name == "scaling":
      from bench import scaling
      rows += scaling.run_attention(repeats, budget) + scaling.run_batch_sizes(repeats, budget)
    else:
      rows += _train_g2p(name.rsplit("_", 1)[1], repeats, budget)
    print(f"[bench] {name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

  info = harness.machine_info(threads)
  # Load averages (1, 5, 15 min): our own run accounts for up to ~2; more means company.
  settings = {"quick": args.quick, "repeats": repeats, "budget_s_per_case": budget,
              "only": selected, "wall_s": round(time.time() - started, 1),
              "malloc_keeps_freed_memory": kept,
              "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "loadavg_at_section_start": section_load}
  path = harness.write_results(harness.results_path(args.out, info["host"]), rows, info, settings)
  print(f"{info['cpu']}, {info['cores']} cores; jax {info['jax']}, torch {info['torch']}; "
        f"load average {settings['loadavg_before'][0]:.1f} before, "
        f"{settings['loadavg_after'][0]:.1f} after; "
        f"median of repeats, ratio = median / median of the 'vs' row\n")
  print(harness.markdown(rows, COLUMNS))
  print(f"results: {os.path.relpath(path)}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
