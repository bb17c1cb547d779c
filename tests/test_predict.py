"""`python -m attention_jax.predict` on tiny trained runs: outputs against the task's own
decoding, scores against a NumPy greedy loop, beams, inputs, formats, heatmaps, errors, and
a workdir left exactly as it was."""
import io
import itertools
import json
import os
import shutil
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attention_jax import data, predict_io, tasks
from attention_jax.data.vocab import BOS_ID, EOS_ID
from attention_jax.train import evaluators

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_predict")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COPY = ["--config.data.name=algorithmic/copy", "--config.evals.dev.examples=16",
        "--config.evals.dev.metrics=sequence_accuracy,token_error_rate", "--config.train.steps=6",
        "--config.evals.dev.heatmaps=0"]  # predict draws its own
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
  return shared_data_dir


def _env(data_dir):
  return dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")


def _train(data_dir, workdir, experiment, *extra, data_flags=tuple(COPY)):
  command = [sys.executable, "-m", "attention_jax.main", f"--config={experiment}:smoke=True",
             f"--workdir={workdir}", *data_flags, *extra]
  proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=_env(data_dir),
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return str(workdir)


@pytest.fixture(scope="module")
def rnn(data_dir, tmp_path_factory):
  """The RNN (Luong attention) after 6 steps: checkpoints 3 and 6, no best one."""
  return _train(data_dir, tmp_path_factory.mktemp("rnn") / "W", "experiments/g2p_attention.py")


@pytest.fixture(scope="module")
def transformer(data_dir, tmp_path_factory):
  """The Transformer after 6 steps; early stopping keeps a best checkpoint."""
  return _train(data_dir, tmp_path_factory.mktemp("tf") / "W", "experiments/g2p_transformer.py",
                "--config.train.early_stop_patience=100")


def _predict(data_dir, workdir, *args, stdin=None):
  return subprocess.run([sys.executable, "-m", "attention_jax.predict", f"--workdir={workdir}",
                         *args], capture_output=True, text=True, cwd=ROOT, env=_env(data_dir),
                        input=stdin, timeout=600)


def _json(proc):
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in proc.stdout.splitlines()]


def _listing(workdir):
  """Every path under the workdir with its size and mtime."""
  out = {}
  for root, dirs, files in os.walk(workdir):
    for name in dirs + files:
      st = os.stat(os.path.join(root, name))
      out[os.path.relpath(os.path.join(root, name), workdir)] = (st.st_size, st.st_mtime_ns)
  return out


def _load(data_dir, workdir, step):
  """(task, params) of a checkpoint, read with plain Orbax, not through predict."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = ml_collections.ConfigDict(
        {k: v for k, v in json.load(f).items() if not k.startswith("_")})
  dataset = data.get_dataset(config.data.name, data_dir=data_dir,
                             manual_dir=config.data.manual_dir)
  task = tasks.build_task(config, dataset)
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return config, task, ocp.StandardCheckpointer().restore(path)["params"]


def _numpy_greedy(task, params, batch, max_len):
  """(ids, log p) per row: argmax step by step through the model's decode interface, the
  log-probabilities from a NumPy log-softmax of each step's logits."""
  model, variables = task.model, {"params": params}
  encoded = model.apply(variables, batch["inputs"], batch["input_lengths"], method=model.encode)
  state = model.apply(variables, encoded, batch["input_lengths"], method=model.init_decode_state)
  rows = len(batch["inputs"])
  tokens, done = np.full(rows, BOS_ID, np.int32), np.zeros(rows, bool)
  ids, total = [], np.zeros(rows)
  for _ in range(max_len):
    logits, state = model.apply(variables, state, tokens, method=model.decode_step)
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    tokens = logp.argmax(-1).astype(np.int32)
    total += np.where(done, 0.0, logp[np.arange(rows), tokens])
    ids.append(np.where(done, 0, tokens))
    done |= tokens == EOS_ID
  return np.stack(ids, 1), total


def test_greedy_equals_the_tasks_decode_and_scores_its_log_probability(data_dir, rnn):
  config, task, params = _load(data_dir, rnn, 6)
  records = task.dataset.texts("dev")[:6]
  results = _json(_predict(data_dir, rnn, "--format=json", *[r["inputs"] for r in records]))
  # The evaluator's path: the trainer's dev batch, its decode budget, task.predict.
  batch = next(iter(task.batches("dev", batch_size=8, indices=range(6))))
  max_len = evaluators.decode_budget(task, config.evals.dev)
  expected = [task.text(row) for row in task.predict(params, batch, method="greedy",
                                                     max_len=max_len)[:6]]
  assert [r["prediction"] for r in results] == expected
  assert [r["input"] for r in results] == [r["inputs"] for r in records]
  ids, log_p = _numpy_greedy(task, params, batch, max_len)
  assert [task.text(row) for row in ids[:6]] == expected
  np.testing.assert_allclose([r["score"] for r in results], log_p[:6], rtol=1e-5, atol=1e-5)
  assert all(r["nbest"] == [{"prediction": r["prediction"], "score": r["score"]}]
             for r in results)


def test_beam_nbest_sorted_and_the_first_is_the_tasks_beam(data_dir, rnn):
  config, task, params = _load(data_dir, rnn, 6)
  inputs = ["123", "98765", "5"]
  proc = _predict(data_dir, rnn, "--format=json", "--decode=beam", "--beam_size=4", "--nbest=3",
                  "--alpha=0", "--max_len=12", stdin="\n".join(inputs) + "\n")
  nbest = _json(proc)
  assert [r["input"] for r in nbest] == inputs  # read from stdin, in order
  batch = predict_io.make_batch(task.dataset, inputs)
  best = task.predict(params, batch, method="beam", beam_size=4, alpha=0.0, max_len=12)
  for result, row in zip(nbest, best, strict=True):
    scores = [h["score"] for h in result["nbest"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)  # alpha 0: by log p
    assert len({h["prediction"] for h in result["nbest"]}) == 3
    assert result["prediction"] == task.text(row)  # the evaluators' beam search's best


def test_inputs_from_arguments_a_file_or_stdin(tmp_path, monkeypatch):
  inputs = ["31", "4159", "26535"]
  path = tmp_path / "inputs.txt"
  path.write_text("\n".join(inputs) + "\n")
  assert predict_io.read_inputs(inputs, None) == inputs
  assert predict_io.read_inputs([], str(path)) == inputs
  monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(inputs) + "\n"))
  assert predict_io.read_inputs([], None) == inputs
  with pytest.raises(predict_io.PredictError, match="not both"):
    predict_io.read_inputs(inputs, str(path))
  with pytest.raises(predict_io.PredictError, match="cannot read --input="):
    predict_io.read_inputs([], str(tmp_path / "missing.txt"))


def test_heatmaps_written_and_workdir_unchanged(data_dir, rnn, tmp_path):
  before = _listing(rnn)
  out = tmp_path / "maps"
  proc = _predict(data_dir, rnn, f"--heatmap={out}", "--checkpoint=3", "--decode=beam",
                  "--nbest=2", "12", "345")
  assert proc.returncode == 0, proc.stderr
  assert len(proc.stdout.splitlines()) == 4
  pngs = sorted(os.listdir(out))
  assert pngs == ["input_0_alignment.png", "input_1_alignment.png"]
  assert all((out / p).read_bytes()[:8] == PNG for p in pngs)
  assert _listing(rnn) == before


def _workdir_without_checkpoints(rnn, tmp_path):
  workdir = tmp_path / "empty"
  workdir.mkdir()
  shutil.copy(os.path.join(rnn, "config.json"), workdir)
  return str(workdir)


@pytest.mark.parametrize("case,args,needles", [
    ("no_config", ["1"], ["has no config.json"]),
    ("no_checkpoint", ["1"], ["has no checkpoint"]),
    ("best", ["--checkpoint=best", "1"], ["kept no best checkpoint", "steps 3, 6"]),
    ("step", ["--checkpoint=4", "1"], ["--checkpoint=4", "steps 3, 6"]),
    ("vocabulary", ["12", "1x2y"], ["'1x2y'", "'x', 'y'"]),
    ("decode", ["--decode=sample", "1"], ["--decode=sample"]),
    ("nbest", ["--nbest=2", "1"], ["--nbest=2", "--decode=beam"]),
])
def test_errors_are_one_line_exit_2(data_dir, rnn, tmp_path, case, args, needles):
  workdir = {"no_config": str(tmp_path),
             "no_checkpoint": _workdir_without_checkpoints(rnn, tmp_path)}.get(case, rnn)
  if case in ("no_config", "no_checkpoint"):
    needles = needles + [workdir]
  proc = _predict(data_dir, workdir, *args)
  assert proc.returncode == 2 and not proc.stdout
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
  assert all(n in lines[0] for n in needles), lines[0]
  if case == "no_checkpoint":
    assert os.listdir(workdir) == ["config.json"]  # nothing created


def test_transformer_best_checkpoint_long_input_and_heatmaps(data_dir, transformer, tmp_path):
  before = _listing(transformer)
  config, task, params = _load(data_dir, transformer, 6)
  assert os.listdir(os.path.join(transformer, "best")) == ["6"]
  records = task.dataset.texts("dev")[:4]
  out = tmp_path / "maps"
  results = _json(_predict(data_dir, transformer, "--checkpoint=best", "--format=json",
                           f"--heatmap={out}", *[r["inputs"] for r in records]))
  batch = next(iter(task.batches("dev", batch_size=4, indices=range(4))))
  ids, log_p = _numpy_greedy(task, params, batch, evaluators.decode_budget(task, config.evals.dev))
  assert [r["prediction"] for r in results] == [task.text(row) for row in ids]
  np.testing.assert_allclose([r["score"] for r in results], log_p, rtol=1e-5, atol=1e-5)
  kinds = ("decoder_cross_attention", "decoder_self_attention", "encoder_self_attention")
  assert sorted(os.listdir(out)) == [f"input_{i}_{k}.png" for i in range(4) for k in kinds]
  assert all((out / p).read_bytes()[:8] == PNG for p in os.listdir(out))
  long = _predict(data_dir, transformer, "1" * 70)
  assert long.returncode == 2 and len(long.stderr.strip().splitlines()) == 1
  assert "71 tokens" in long.stderr and "limit of 64" in long.stderr
  assert _listing(transformer) == before


@pytest.fixture(scope="module")
def lm(data_dir, tmp_path_factory):
  """The character LM (experiments/lm_chars.py smoke) on a corpus of fortunes written here."""
  corpus = tmp_path_factory.mktemp("fortunes")
  quips = ["A fool and his money are soon parted.", "Time flies like an arrow."]
  (corpus / "quips").write_text("\n%\n".join(f"{quips[i % 2]} (no. {i})" for i in range(80)))
  return _train(data_dir, tmp_path_factory.mktemp("lm") / "W", "experiments/lm_chars.py",
                f"--config.data.manual_dir={corpus}", "--config.data.batch_size=8",
                "--config.data.eval_batch_size=8", data_flags=())


def test_lm_continues_prompts_as_a_full_forward_argmax_does(data_dir, lm):
  """Greedy continuations through the KV cache equal an argmax loop over full forward passes
  of the growing sequence; the score is the NumPy log-softmax sum of what that loop chose."""
  config, task, params = _load(data_dir, lm, 6)
  prompts = ["A fool", "Time"]
  results = _json(_predict(data_dir, lm, "--format=json", "--max_len=12", *prompts))
  vocab = task.dataset.target_vocab
  # One compiled forward over a fixed length: the model is causal, so position i's logits
  # do not depend on the padding after it (op by op, each length took seconds).
  forward = jax.jit(lambda ids: task.model.apply({"params": params}, ids))
  for prompt, result in zip(prompts, results, strict=True):
    tokens, log_p = vocab.encode(prompt), 0.0
    for _ in range(12):
      padded = np.zeros((1, 32), np.int32)
      padded[0, :len(tokens)] = tokens
      logits = np.asarray(forward(padded), np.float64)[0, len(tokens) - 1]
      logp = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
      tokens.append(int(logp.argmax()))
      log_p += logp[tokens[-1]]
      if tokens[-1] == EOS_ID:
        break
    continuation = tokens[len(vocab.encode(prompt)):]
    assert result["prediction"] == task.text([t for t in continuation if t != EOS_ID])
    np.testing.assert_allclose(result["score"], log_p, rtol=1e-5)
  wrong = _predict(data_dir, lm, "--decode=beam", "Time")
  assert wrong.returncode == 2 and wrong.stderr == (
      "error: --decode=beam is not a decoding of task 'lm'; known: sample, greedy\n")


@pytest.fixture(scope="module")
def speech(data_dir, spoken_digit_recordings, tmp_path_factory):
  """The speech model (joint CTC-attention, CTC decode weight 0.5) after 2 steps on tones."""
  return _train(data_dir, tmp_path_factory.mktemp("speech") / "W",
                "experiments/speech_digits.py", "--config.train.steps=2",
                "--config.evals.dev.every=2", "--config.evals.dev.heatmaps=0",
                "--config.task.ctc_weight=0.5",
                f"--config.data.manual_dir={spoken_digit_recordings}", data_flags=())


def _ctc_log_prob(logits: np.ndarray, labels: list[int]) -> float:
  """log p_ctc(labels | frames) by brute force: every path over the frames that collapses
  (repeats merged, then blanks dropped) to the labels."""
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  total = -np.inf
  for path in itertools.product(range(logits.shape[1]), repeat=len(logits)):
    merged = [p for i, p in enumerate(path) if i == 0 or p != path[i - 1]]
    if [p for p in merged if p != 0] == labels:
      total = np.logaddexp(total, logp[np.arange(len(path)), path].sum())
  return float(total)


def test_speech_inputs_are_audio_files_scored_by_the_decodings_mix(data_dir, speech,
                                                                    spoken_digit_recordings,
                                                                    tmp_path):
  import librosa  # pylint: disable=g-import-not-at-top
  import soundfile  # pylint: disable=g-import-not-at-top
  from attention_jax.data import spoken_digits  # pylint: disable=g-import-not-at-top
  plain = os.path.join(spoken_digit_recordings, "7_alice_3.wav")
  tone = np.sin(2 * np.pi * 700 * np.arange(1600) / 16000)
  stereo = str(tmp_path / "mine.flac")  # 16 kHz stereo, another format
  soundfile.write(stereo, np.stack([0.3 * tone, 0.1 * tone], 1), 16000)
  out = tmp_path / "maps"
  results = _json(_predict(data_dir, speech, "--format=json", f"--heatmap={out}", plain, stereo))
  assert [r["input"] for r in results] == [plain, stereo]
  assert sorted(os.listdir(out)) == ["input_0_alignment.png", "input_1_alignment.png"]
  # The features as the data builder computes them, after reading and resampling here.
  mixed = soundfile.read(stereo, dtype="float32")[0].mean(axis=1)  # FLAC holds 16-bit samples
  audio = [soundfile.read(plain, dtype="float32")[0],
           librosa.resample(mixed, orig_sr=16000, target_sr=8000)]
  config, task, params = _load(data_dir, speech, 2)
  records = [{"inputs": p, "targets": "", "features": spoken_digits.log_mel(a)}
             for p, a in zip((plain, stereo), audio)]
  np.testing.assert_allclose(task.dataset.input_record(stereo)["features"],
                             records[1]["features"], atol=1e-4)
  batch = predict_io.make_batch(task.dataset, records)
  ids = task.predict(params, batch, method="greedy", max_len=task.default_decode_len("dev"))
  assert [r["prediction"] for r in results] == [task.text(row) for row in ids]
  # Score: 0.5 log p_attention (NumPy log-softmax, EOS included when emitted) + 0.5 log p_ctc
  # (brute force over the alignments).
  for i, result in enumerate(results):
    labels, finished = predict_io.until_eos(ids[i])
    row = predict_io.make_batch(task.dataset, records[i:i + 1], [labels])
    out = task.apply(params, row)
    logits = np.asarray(out["attention"][0], np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    tokens = labels + [EOS_ID] * finished
    attention = sum(logp[t, y] for t, y in enumerate(tokens))
    frames = int(out["frames"][0])
    ctc = _ctc_log_prob(np.asarray(out["ctc"][0, :frames], np.float64), labels)
    assert np.isfinite(ctc) and frames >= 2  # a real sum over alignments
    np.testing.assert_allclose(result["score"], 0.5 * attention + 0.5 * ctc, rtol=1e-4)


def test_speech_input_that_is_not_audio_is_one_line(data_dir, speech, tmp_path):
  bad = tmp_path / "notes.wav"
  bad.write_text("not audio")
  proc = _predict(data_dir, speech, str(bad))
  assert proc.returncode == 2 and not proc.stdout
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable audio file")
  _, task, _ = _load(data_dir, speech, 2)  # the same check, in-process: a missing file
  with pytest.raises(data.DataError, match=r"missing.wav: not a readable audio file"):
    task.dataset.input_record(str(tmp_path / "missing.wav"))


# `launch.ensemble` on the trained run above: an ensemble of one run with itself averages two
# equal distributions, so it must score exactly as the run scored itself at that step.

def _ensemble(data_dir, monkeypatch, *args):
  from launch import ensemble  # pylint: disable=import-outside-toplevel
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", data_dir)
  return ensemble.main(list(args))


def test_ensemble_of_a_run_with_itself_scores_as_the_run(data_dir, rnn, tmp_path, monkeypatch):
  out = tmp_path / "ensembles" / "twice"
  assert _ensemble(data_dir, monkeypatch, f"--members={rnn},{rnn}", f"--workdir={out}",
                   "--checkpoint=latest") == 0
  result = json.loads((out / "result.json").read_text())
  own = _dev_row(rnn, 6)
  assert result["member_steps"] == [6, 6] and result["best_by"] == "loss"
  spent = json.loads(open(os.path.join(rnn, "result.json")).read())
  # The run's training counted once (it is both members), and this evaluation.
  assert result["wall_time_s"] == pytest.approx(spent["wall_time_s"] + result["eval_wall_s"],
                                                abs=0.01)
  assert spent["cpu_time_s"] < result["cpu_time_s"]
  for key in ("loss", "nll", "accuracy", "sequence_accuracy", "token_error_rate"):
    assert result["dev"][key] == pytest.approx(own[key], rel=1e-5, abs=1e-6), key
  assert result["final"] == result["dev"]
  records = (out / "predictions_dev.jsonl").read_text().splitlines()
  assert len(records) == 16  # the evaluator's sample, as the run drew it
  manifest = json.loads((out.parent / "sweep.json").read_text())
  assert manifest["trials"]["twice"]["status"] == "done"
  config = json.loads((out / "config.json").read_text())
  assert config["ensemble"] == {"members": [rnn, rnn], "models": ["rnn_seq2seq"] * 2,
                                "combine": "probs", "checkpoints": ["latest"] * 2,
                                "steps": [6, 6]}
  # A second ensemble into the same workdir would overwrite a result: refused.
  assert _ensemble(data_dir, monkeypatch, f"--members={rnn},{rnn}", f"--workdir={out}") == 2


def _dev_row(workdir, step):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "dev" and r["step"] == step][-1]


@pytest.mark.parametrize("combine", ["probs", "log_probs"])
def test_ensemble_of_an_rnn_and_a_transformer(data_dir, rnn, transformer, tmp_path, monkeypatch,
                                              combine):
  """Each member decodes with its own model. Either pool's token NLL is at most the members'
  mean NLL (Jensen for the mean probability; for the normalised geometric mean, its
  normaliser sum_y prod_i p_i(y)^(1/N) <= 1 by the AM-GM inequality), and below it unless
  the members agree; equal-weight rules, so on the same dev sample at the same step."""
  out = tmp_path / "ensembles" / combine
  assert _ensemble(data_dir, monkeypatch, "--members", rnn, transformer, f"--workdir={out}",
                   "--checkpoint=latest", f"--combine={combine}", "--evals=dev") == 0
  config = json.loads((out / "config.json").read_text())["ensemble"]
  assert config["models"] == ["rnn_seq2seq", "transformer"] and config["combine"] == combine
  members = [_dev_row(rnn, 6)["nll"], _dev_row(transformer, 6)["nll"]]
  nll = json.loads((out / "result.json").read_text())["dev"]["nll"]
  assert nll < np.mean(members) - 1e-4, (nll, members)
  manifest = json.loads((out.parent / "sweep.json").read_text())
  overrides = manifest["trials"][combine]["overrides"]
  assert overrides["combine"] == combine and overrides["models"] == "rnn_seq2seq+transformer"


def test_checkpoint_averaging(data_dir, rnn, tmp_path, monkeypatch):
  """DIR@A+B, or members pooled with --combine=params: one model whose parameters are the
  checkpoints' mean. The mean of a checkpoint with itself scores as that checkpoint; the
  mean of steps 3 and 6 is one model of the run's size that scores as neither, by either
  route."""
  root = tmp_path / "averages"
  for name, members in (("same", [f"{rnn}@6+6"]), ("mean", [f"{rnn}@3+6"]),
                        ("params", [f"{rnn}@3", f"{rnn}@6", "--combine=params"])):
    assert _ensemble(data_dir, monkeypatch, "--members", *members, f"--workdir={root / name}",
                     "--evals=dev") == 0
  same, mean, params = (json.loads((root / n / "result.json").read_text())
                        for n in ("same", "mean", "params"))
  assert params["dev"] == mean["dev"] and params["member_steps"] == [3, 6]
  own = json.loads(open(os.path.join(rnn, "result.json")).read())
  for key in ("loss", "nll", "accuracy", "sequence_accuracy", "token_error_rate"):
    assert same["dev"][key] == pytest.approx(_dev_row(rnn, 6)[key], rel=1e-5, abs=1e-6), key
  assert mean["member_steps"] == [[3, 6]] and mean["num_params"] == own["num_params"]
  assert min(abs(mean["dev"]["nll"] - _dev_row(rnn, s)["nll"]) for s in (3, 6)) > 1e-4
  assert mean["wall_time_s"] == pytest.approx(own["wall_time_s"] + mean["eval_wall_s"], abs=0.01)
  manifest = json.loads((root / "sweep.json").read_text())["trials"]
  assert manifest["mean"]["overrides"]["checkpoint"] == "3+6"
  assert manifest["params"]["overrides"]["checkpoint"] == "3,6"


def test_one_run_redecoded_by_beam_search_and_on_train(data_dir, rnn, tmp_path, monkeypatch,
                                                       capsys):
  """--decode=beam on one checkpoint: a beam of one is greedy search, so it predicts what a
  NumPy greedy loop does and scores as the run's own greedy dev evaluator at that step;
  --split=train decodes train records as that loop does. The decoding changes go into
  config.json and the sweep's overrides; beam settings for a greedy evaluator, values out
  of range and an unknown split are refused before anything is written."""
  root = tmp_path / "redecode"
  assert _ensemble(data_dir, monkeypatch, "--members", f"{rnn}@6", "--decode=beam",
                   "--beam-size=1", "--beam-alpha=0", "--evals=dev",
                   f"--workdir={root / 'k1'}") == 0
  result = json.loads((root / "k1" / "result.json").read_text())
  own = _dev_row(rnn, 6)
  for key in ("loss", "nll", "sequence_accuracy", "token_error_rate"):
    assert result["dev"][key] == pytest.approx(own[key], rel=1e-5, abs=1e-6), key
  records = [json.loads(line) for line in (root / "k1" / "predictions_dev.jsonl").open()]
  config, task, params = _load(data_dir, rnn, 6)
  batch = predict_io.make_batch(task.dataset, [r["source"] for r in records])
  ids, _ = _numpy_greedy(task, params, batch, evaluators.decode_budget(task, config.evals.dev))
  assert [r["prediction"] for r in records] == [task.text(row) for row in ids]
  assert json.loads((root / "k1" / "config.json").read_text())["ensemble"]["decoding"] == {
      "decode": "beam", "beam_size": 1, "beam_alpha": 0.0}
  overrides = json.loads((root / "sweep.json").read_text())["trials"]["k1"]["overrides"]
  assert overrides["beam_size"] == 1 and overrides["checkpoint"] == "6"
  # --split: the dev evaluator's sample drawn from train (a teacher's outputs to distil).
  assert _ensemble(data_dir, monkeypatch, "--members", f"{rnn}@6", "--split=train",
                   "--evals=dev", f"--workdir={root / 'train'}") == 0
  records = [json.loads(line) for line in (root / "train" / "predictions_dev.jsonl").open()]
  train = {r["inputs"] for r in task.dataset.texts("train")}
  assert len(records) == 16 and {r["source"] for r in records} <= train
  batch = predict_io.make_batch(task.dataset, [r["source"] for r in records])
  on_train = ml_collections.ConfigDict(dict(config.evals.dev, split="train"))
  ids, _ = _numpy_greedy(task, params, batch, evaluators.decode_budget(task, on_train))
  assert [r["prediction"] for r in records] == [task.text(row) for row in ids]
  cases = [(["--beam-size=3"], "--beam-size set a beam search, but evals.dev decodes "
                               "'greedy': add --decode=beam or leave dev out of --evals"),
           (["--decode=beam", "--beam-size=0"], "--beam-size must be at least 1, got 0"),
           (["--decode=beam", "--beam-alpha=-1"], "--beam-alpha must be a number at least 0"),
           (["--split=valid"], "--split='valid' is not a split of algorithmic/copy; known: "
                               "train, dev, test")]
  for args, message in cases:
    assert _ensemble(data_dir, monkeypatch, "--members", f"{rnn}@6", *args, "--evals=dev",
                     f"--workdir={root / 'bad'}") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("launch.ensemble: ") and message in err, err
  assert not (root / "bad").exists()


def test_ensemble_on_a_damaged_shard_stops_before_decoding(data_dir, rnn, tmp_path,
                                                           monkeypatch, capsys):
  """The run's data hash reads every record first: a train shard damaged inside stops an
  ensemble that decodes only dev, with one line naming the shard, before any write."""
  copy = tmp_path / "data"
  shutil.copytree(os.path.join(data_dir, "algorithmic", "copy"), copy / "algorithmic" / "copy")
  shard = copy / "algorithmic" / "copy" / "1.0.0" / "algorithmic-train.array_record-00000-of-00001"
  size = shard.stat().st_size
  with open(shard, "r+b") as f:
    f.seek(size // 3)
    f.write(b"\xff" * (size // 3))
  out = tmp_path / "ensembles" / "damaged"
  assert _ensemble(str(copy), monkeypatch, "--members", f"{rnn}@3+6", "--evals=dev",
                   f"--workdir={out}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith(f"launch.ensemble: {shard} is damaged (RuntimeError: "), err[-1]
  assert not any(line.startswith("eval ") for line in err), err  # nothing decoded
  assert not out.exists()


def test_ensemble_refuses_members_that_differ_or_lack_the_checkpoint(data_dir, rnn, tmp_path,
                                                                      monkeypatch, capsys):
  other = tmp_path / "other"
  other.mkdir()
  config = json.loads(open(os.path.join(rnn, "config.json")).read())
  name, config["data"]["name"] = config["data"]["name"], "algorithmic/reverse"
  (other / "config.json").write_text(json.dumps(config))
  moved = tmp_path / "moved"  # the same data, read from elsewhere, another model, trained otherwise
  moved.mkdir()
  config["data"]["name"] = name
  config["data"]["data_dir"] = "/elsewhere"
  config["data"]["batch_size"] += 1
  config["task"]["label_smoothing"] = 0.1
  config["model"]["hidden_dim"] += 1
  (moved / "config.json").write_text(json.dumps(config))
  from launch import ensemble  # pylint: disable=import-outside-toplevel
  assert len(ensemble.load_members([rnn, str(moved)])) == 2
  trial = tmp_path / "attention=luong,seed=0"  # a sweep's trial dir: commas in its name
  trial.mkdir()
  assert ensemble.member_specs([f"{rnn},{moved}@3", f"{trial}@best+7"]) == [
      (rnn, None), (str(moved), "3"), (str(trial), "best+7")]
  at = tmp_path / "run@2"  # a directory with an @ in its name
  at.mkdir()
  assert ensemble.member_specs([str(at), f"{at}@6"]) == [(str(at), None), (str(at), "6")]
  out = tmp_path / "ens" / "E"
  cases = [([f"--members={rnn},{other}"], rf"{other} differs from {rnn} in data.name"),
           ([f"--members={rnn}"], "needs two checkpoints or more (runs, or DIR@A+B), or one "
                                  "with --decode, --beam-size, --beam-alpha or --split; got 1"),
           ([f"--members={rnn},{rnn}"], "kept no best checkpoint"),  # --checkpoint=best
           ([f"--members={rnn},{rnn}", "--evals=dev,tset"], "tset not among the members'"),
           ([f"--members={rnn}@6,{rnn}@5"], "--checkpoint=5 is not latest, best or a saved"),
           ([f"--members={rnn},{moved}", "--combine=params"],
            "in model.hidden_dim: the members of an ensemble share their task and data and "
            "model configs")]
  for args, message in cases:
    assert _ensemble(data_dir, monkeypatch, *args, f"--workdir={out}") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("launch.ensemble: ") and message in err, err
  assert not out.parent.exists()  # caught before anything was written
