"""The benchmark harness on trivial functions: alternation, statistics, table, results JSON."""
import datetime
import json
import sys

import jax.numpy as jnp
import numpy as np

from bench import harness


class _FakeTime:
  """A clock that only the timed functions move, and a sleep that moves nothing: no waiting."""

  def __init__(self):
    self.now = 0.0

  def perf_counter(self):
    return self.now

  def sleep(self, seconds):
    pass


def test_measure_alternates_and_excludes_warmup(monkeypatch):
  clock = _FakeTime()
  monkeypatch.setattr(harness, "time", clock)
  calls = []

  def call(name, seconds):
    calls.append(name)
    clock.now += seconds

  fns = {"a": lambda: call("a", 1.0), "b": lambda: call("b", 2.0)}
  times = harness.measure(fns, repeats=4, warmup=2)
  assert calls[:4] == ["a", "a", "b", "b"]  # warm-up: not timed
  assert calls[4:] == ["a", "b", "b", "a", "a", "b", "b", "a"]  # A B, then B A, ...
  assert times == {"a": [1.0] * 4, "b": [2.0] * 4}


def test_budget_cuts_repeats_to_the_minimum(monkeypatch):
  clock = _FakeTime()
  monkeypatch.setattr(harness, "time", clock)

  def slow():
    clock.now += 1.0

  assert len(harness.measure({"slow": slow}, repeats=50, budget_s=0.5, min_repeats=3)["slow"]) == 3
  assert len(harness.measure({"slow": slow}, repeats=50, budget_s=10.0, min_repeats=3)["slow"]) == 9


def _rows():
  return [harness.Row("bench", "case 1", "ours", [0.003, 0.001, 0.002], "peer", {"mfu": 0.5}),
          harness.Row("bench", "case 1", "peer", [0.004, 0.004, 0.006]),
          harness.Row("other", "case", "x", [1.5]),
          harness.Row("other", "case", "skipped", [], "x", {"note": "needs 9 GiB"})]


def test_statistics_ratio_and_markdown():
  rows = _rows()
  ours, peer = rows[0], rows[1]
  assert (ours.median_s, ours.min_s, ours.max_s) == (0.002, 0.001, 0.003)
  assert harness.ratio(rows, ours) == 0.002 / 0.004
  assert harness.ratio(rows, peer) is None
  table = harness.markdown(rows, {"bench": {"mfu": "MFU"}})
  assert "### bench" in table and "### other" in table
  assert "| case 1 | ours | 2 | 1-3 | 0.50 | peer | 0.5 |" in table
  assert "| case 1 | peer | 4 | 4-6 |  |  |  |" in table
  assert "| case | x | 1500 | 1500-1500 |  |  |" in table
  assert "| case | skipped | not run |  |  |  |" in table
  assert harness.ratio(rows, rows[3]) is None and rows[3].median_s is None


def test_results_json_round_trip(tmp_path):
  rows = _rows()
  path = harness.results_path(str(tmp_path), host="box", date=datetime.date(2026, 1, 2))
  assert path.endswith("2026-01-02-box.json")
  info = {"host": "box", "cpu": "test cpu", "threads": {"torch_intra_op": 2}}
  harness.write_results(path, rows, info, {"quick": True})
  doc = json.loads(open(path).read())
  assert doc["machine"] == info and doc["settings"] == {"quick": True}
  first = doc["rows"][0]
  assert first["impl"] == "ours" and first["times_s"] == [0.003, 0.001, 0.002]
  assert first["median_s"] == 0.002 and first["ratio"] == 0.5 and first["extra"] == {"mfu": 0.5}
  assert doc["rows"][1]["ratio"] is None


def test_machine_info_records_versions_and_threads():
  info = harness.machine_info({"cores": 2})
  assert info["threads"] == {"cores": 2}
  assert info["jax"] and info["cpu"] and info["cores"] >= 1


def test_without_torch_ours_run_alone_with_their_share_of_the_peak(monkeypatch, tmp_path, capsys):
  """An accelerator machine has no torch: bench.run skips the peers instead of exiting, and
  attention rows carry TFLOP/s and the fraction of the run's matmul peak."""
  from bench import attention, memory, run, transformer_lm
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  monkeypatch.setattr(harness, "PAUSE_S", 0.0)
  monkeypatch.setattr(memory, "attention_rss_mib", lambda impl, case: 1.0)  # no subprocesses
  monkeypatch.setattr(attention, "SHAPES", ((1, 32),))
  monkeypatch.setattr(transformer_lm, "PEAK_N", 64)
  assert run.main(["--quick", "--only=attention", f"--out={tmp_path}"]) == 0
  (path,) = tmp_path.iterdir()
  results = json.loads(path.read_text())
  rows = results["rows"]
  assert results["machine"]["torch"] is None
  assert len(rows) == 2 * len(attention.implementations())  # causal fwd, fwd+bwd
  assert {r["impl"] for r in rows} == {f"jax {impl}" for impl in attention.implementations()}
  for r in rows:
    assert r["baseline"] == (None if r["impl"] == "jax xla" else "jax xla") and r["times_s"]
    case = attention.Case(1, 32, causal=True, backward="fwd+bwd" in r["case"])
    median = sorted(r["times_s"])[len(r["times_s"]) // 2]
    assert np.isclose(r["extra"]["tflops"], attention.attention_flops(case) / median / 1e12)
    assert 0 < r["extra"]["peak_fraction"] < 10
  assert "torch is not installed" in capsys.readouterr().err


def test_on_an_accelerator_the_cpu_peers_are_skipped_and_ours_run_in_bfloat16(
    monkeypatch, tmp_path, capsys):
  """Off the CPU (simulated: `harness.on_cpu` says no) torch's CPU peers would time another
  device: they are skipped even where torch is installed, and ours compute in bfloat16."""
  from bench import attention, memory, run, transformer_lm
  monkeypatch.setattr(harness, "on_cpu", lambda: False)
  monkeypatch.setattr(transformer_lm, "PEAK_N", 16)  # 4x on an accelerator
  monkeypatch.setattr(harness, "PAUSE_S", 0.0)
  monkeypatch.setattr(memory, "attention_rss_mib", lambda impl, case: 1.0)
  monkeypatch.setattr(attention, "SHAPES", ((1, 32),))
  compiled_dtypes = []
  compile_jax = attention.compile_jax

  def spy(impl, case):
    compiled, mem = compile_jax(impl, case)
    compiled_dtypes.append(compiled.in_avals[0][0].dtype)
    return compiled, mem

  monkeypatch.setattr(attention, "compile_jax", spy)
  assert not harness.have_torch()
  assert harness.compute_dtype() == jnp.bfloat16
  assert run.main(["--quick", "--only=attention", "--out", str(tmp_path)]) == 0
  (path,) = tmp_path.iterdir()
  results = json.loads(path.read_text())
  assert results["machine"]["torch"] is None
  assert {r["impl"] for r in results["rows"]} == {f"jax {i}" for i in attention.OURS}
  assert compiled_dtypes and set(compiled_dtypes) == {jnp.dtype(jnp.bfloat16)}
  assert "the PyTorch peers, CPU programs, are skipped" in capsys.readouterr().err
