"""experiments/speech_digits.py: the sweep's trials and the convergence report of a root."""
import json
import os

from attention_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEECH = experiment.load(os.path.join(ROOT, "experiments", "speech_digits.py"))


def test_sweep_is_seed_major_with_one_ctc_only_trial_per_seed():
  trials = []
  SPEECH.sweep(lambda **o: trials.append(o))
  assert len(trials) == 27
  assert [t["seed"] for t in trials] == sorted(t["seed"] for t in trials)
  first_seed = [(t["ctc_weight"], t["score"]) for t in trials if t["seed"] == 0]
  assert first_seed[:5] == [(0.0, "additive"), (0.0, "location_aware"), (0.5, "additive"),
                            (0.5, "location_aware"), (1.0, "location_aware")]
  assert sorted({w for w, _ in first_seed}) == [0.0, 0.2, 0.5, 0.8, 1.0]


def _trial(root, name, overrides, curve, test_cer):
  workdir = root / name
  workdir.mkdir()
  rows = [{"step": s, "split": "train", "loss": 1.0} for s, _, _ in curve]
  rows += [{"step": s, "split": "dev", "cer": c, "monotonic": m} for s, c, m in curve]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  best = min(c for _, c, _ in curve)
  (workdir / "result.json").write_text(json.dumps({
      "best": {"cer": best}, "test": {"cer": test_cer, "wer": 2 * test_cer},
      "test_seen": {"cer": test_cer / 2, "wer": test_cer}}))
  return {"workdir": str(workdir), "overrides": overrides, "status": "done"}


def test_report_gives_first_steps_and_means_over_seeds(tmp_path):
  trials = {
      "a0": _trial(tmp_path, "a0", {"ctc_weight": 0.0, "score": "additive", "seed": 0},
                   [(100, 0.9, 0.1), (200, 0.25, 0.55), (300, 0.1, 0.9)], 0.2),
      "a1": _trial(tmp_path, "a1", {"ctc_weight": 0.0, "score": "additive", "seed": 1},
                   [(100, 0.5, 0.0), (200, 0.2, 0.4), (300, 0.2, 0.3)], 0.4),
      "c0": _trial(tmp_path, "c0", {"ctc_weight": 1.0, "score": "location_aware", "seed": 0},
                   [(100, 0.28, 0.0), (200, 0.12, 0.0)], 0.1),
  }
  (tmp_path / "running").mkdir()  # no result.json yet: left out
  trials["r"] = {"workdir": str(tmp_path / "running"), "overrides": {"ctc_weight": 0.5}}
  (tmp_path / "sweep.json").write_text(json.dumps({"trials": trials}))
  assert SPEECH.main([f"--root={tmp_path}", f"--out={tmp_path / 'out'}"]) == 0
  table = (tmp_path / "out" / "convergence.md").read_text().splitlines()
  assert len(table) == 4  # header, rule, two configurations
  additive = [c.strip() for c in table[2].split("|")[1:-1]]
  # CER <= 30%: steps 200 and 200; <= 15%: 300 (seed 1 never); monotonic >= 0.5: 200 (seed 1
  # never); its final value: mean of 0.9 and 0.3
  assert additive[:7] == ["additive", "0", "2", "200", "300", "200", "0.60"]
  assert additive[7:9] == ["15.0 +- 5.0", "30.0 +- 10.0"]  # best dev CER, test CER
  ctc = [c.strip() for c in table[3].split("|")[1:-1]]
  assert ctc[:7] == ["(none: CTC only)", "1", "1", "100", "200", "-", "-"]
  assert (tmp_path / "out" / "dev_cer_curves.png").read_bytes()[:4] == b"\x89PNG"
