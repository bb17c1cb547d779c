"""spoken_digits: the split rule, targets, log-mel features, feature batches and bad inputs.

Everything is built from tiny WAV files written here (0.1 s tones, one pitch per
digit, one loudness per speaker), never from real recordings; features are checked
against librosa's own melspectrogram of audio put together here.
"""
import io
import os
import re
from contextlib import redirect_stderr

import librosa
import numpy as np
import pytest
import soundfile
import tensorflow_datasets as tfds

from attention_jax.data import make_pipeline, prepare, registry, spoken_digits
from attention_jax.data.errors import DataError, MissingDataError
from attention_jax.data.vocab import BOS_ID, EOS_ID

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_data_spoken_digits")

tfds.display_progress_bar(False)

SPEAKERS = ("alice", "bob", "carol")
INDICES = range(12)  # 0-4 test, 5-9 dev, 10-11 train
TONE = 800  # samples: 0.1 s
SIZES = (("train", 12), ("dev", 4), ("test", 4), ("test_seen", 4))
WORDS = spoken_digits.make_config("words_tiny", sizes=SIZES, max_digits=4)
UNSEEN = spoken_digits.make_config("unseen_tiny", sizes=SIZES, max_digits=4, held_out="carol")
# Known silences (50 ms = 400 samples at the ends, 100 ms between) and no noise.
EXACT = spoken_digits.make_config("exact_tiny", target="digits", max_digits=3, noise=0.0,
                                  gap_ms=(100, 100), edge_ms=(50, 50),
                                  sizes=(("train", 3), ("dev", 3), ("test", 3)))
ONE = {"process_index": 0, "process_count": 1, "num_threads": 0, "add_eos_to_inputs": False}
_STEM = re.compile(r"([0-9])_([a-z]+)_([0-9]+)")


def _tone(digit: int, speaker: int, index: int) -> np.ndarray:
  t = np.arange(TONE) / 8000
  return (0.2 + 0.1 * speaker) * np.sin(2 * np.pi * (300 + 200 * digit) * t + index)


def _write_wav(path, audio, rate=8000) -> None:
  soundfile.write(os.fspath(path), audio, rate, subtype="PCM_16")


def _write_recordings(directory, speakers=SPEAKERS, indices=INDICES) -> str:
  os.makedirs(directory, exist_ok=True)
  for digit in range(10):
    for s, speaker in enumerate(speakers):
      for index in indices:
        _write_wav(os.path.join(directory, f"{digit}_{speaker}_{index}.wav"),
                   _tone(digit, s, index))
  return os.fspath(directory)


@pytest.fixture(scope="module")
def manual(tmp_path_factory) -> str:
  directory = _write_recordings(tmp_path_factory.mktemp("fsdd") / "recordings")
  with open(os.path.join(directory, "README.md"), "w") as f:  # not a .wav: ignored
    f.write("tones\n")
  os.makedirs(os.path.join(directory, "sub.wav"))  # a directory: ignored
  return directory


@pytest.fixture(scope="module")
def built(manual, tmp_path_factory):
  """config -> its data set, built on first use in this module's data dir."""
  root = str(tmp_path_factory.mktemp("spoken_data"))
  cache = {}

  def get(config):
    if config.name not in cache:
      cache[config.name] = registry.get_dataset("spoken_digits", data_dir=root,
                                                manual_dir=manual, config=config)
    return cache[config.name]

  return get


def _stems(record) -> list[tuple[int, str, int]]:
  return [(int(d), s, int(i)) for d, s, i in
          (_STEM.fullmatch(stem).groups() for stem in record["inputs"].split(" "))]


def _pool(index: int) -> str:
  return "test" if index < 5 else "dev" if index < 10 else "train"


def test_splits_follow_the_index_rule(built):
  dataset = built(WORDS)
  assert dataset.splits == {"train": 12, "dev": 4, "test": 4}
  for split in dataset.splits:
    for record in dataset.texts(split):
      assert {_pool(i) for _, _, i in _stems(record)} == {split}, record["inputs"]
  meta = dataset.metadata
  assert meta["recordings"] == {"train": 60, "dev": 150, "test": 150}
  assert meta["speakers"] == list(SPEAKERS) and meta["held_out"] is None
  assert (meta["sample_rate"], meta["feature_dim"], meta["hop_ms"], meta["window_ms"]) == (
      8000, 80, 10, 25)


def test_targets_are_the_digits_played(built):
  words, digits = built(WORDS), built(EXACT)
  for record in words.texts("train") + words.texts("test"):
    played = [d for d, _, _ in _stems(record)]
    assert 1 <= len(played) <= 4
    assert record["targets"] == " ".join(spoken_digits.WORDS[d] for d in played)
    assert record["references"] == [record["targets"]]
  for record in digits.texts("dev"):
    assert record["targets"] == "".join(str(d) for d, _, _ in _stems(record))
  train_chars = {c for r in words.texts("train") for c in r["targets"]}
  assert set(words.target_vocab.symbols) == train_chars and " " in train_chars


def test_unseen_speaker_is_held_out(built):
  dataset = built(UNSEEN)
  assert dataset.splits == {"train": 12, "dev": 4, "test": 4, "test_seen": 4}
  speakers = {s: {spk for r in dataset.texts(s) for _, spk, _ in _stems(r)}
              for s in dataset.splits}
  assert "carol" not in speakers["train"] | speakers["dev"] | speakers["test_seen"]
  assert speakers["test"] == {"carol"}
  for split, pool in (("train", "train"), ("dev", "dev"), ("test_seen", "test")):
    assert {_pool(i) for r in dataset.texts(split) for _, _, i in _stems(r)} == {pool}
  assert dataset.metadata["recordings"] == {"train": 40, "dev": 100, "test": 120,
                                            "test_seen": 100}
  with pytest.raises(DataError, match="Unknown split 'test_seen' of spoken_digits/words_tiny"):
    built(WORDS).source("test_seen")


def _reference_features(manual: str, record: dict) -> np.ndarray:
  """librosa's melspectrogram of the utterance put together from its WAV files."""
  pieces = [np.zeros(400)]
  for stem in record["inputs"].split(" "):
    pieces += [soundfile.read(os.path.join(manual, f"{stem}.wav"))[0], np.zeros(800)]
  pieces[-1] = np.zeros(400)
  audio = np.concatenate(pieces).astype(np.float32)
  mel = librosa.feature.melspectrogram(y=audio, sr=8000, n_fft=512, hop_length=80,
                                       win_length=200, n_mels=80, fmin=20, fmax=4000,
                                       center=True, pad_mode="constant")
  log = np.log(np.maximum(mel, 1e-10)).T
  assert log.shape == (1 + len(audio) // 80, 80)
  return (log - log.mean(0)) / log.std(0)


def test_features_equal_librosa_on_the_composed_audio(built, manual):
  dataset = built(EXACT)
  for split in dataset.splits:
    source = dataset.source(split)
    for i in range(len(source)):
      record = source[i]
      assert record["features"].dtype == np.float32
      np.testing.assert_allclose(record["features"], _reference_features(manual, record),
                                 atol=2e-2, rtol=0)


def test_features_are_normalised_per_utterance_and_bin(built):
  dataset = built(WORDS)
  source = dataset.source("train")
  for i in range(len(source)):
    features = source[i]["features"]
    assert features.shape[1] == 80
    np.testing.assert_allclose(features.mean(0), 0, atol=2e-3)
    np.testing.assert_allclose(features.std(0), 1, atol=2e-3)


def test_frames_fit_the_silence_ranges_and_stats(built):
  dataset = built(WORDS)
  stats = dataset.metadata["split_stats"]
  for split in dataset.splits:
    source = dataset.source(split)
    frames = []
    for i in range(len(source)):
      record = source[i]
      n = len(_stems(record))
      lo = n * TONE + 2 * 400 + (n - 1) * 400   # edges 50-150 ms, gaps 50-250 ms
      hi = n * TONE + 2 * 1200 + (n - 1) * 2000
      frames.append(len(record["features"]))
      assert 1 + lo // 80 <= frames[-1] <= 1 + hi // 80
    assert stats[split]["max_input_length"] == max(frames)
    assert stats[split]["mean_input_length"] == pytest.approx(np.mean(frames), abs=1e-3)
    assert stats[split]["num_examples"] == len(frames)
  longest_target = max(len(r["targets"]) for r in dataset.texts("train"))
  assert dataset.max_lengths("train") == (stats["train"]["max_input_length"], longest_target)


def test_compose_silences_and_noise():
  parts = [np.full(1000, 0.5, np.float32), np.full(500, -0.5, np.float32)]
  quiet = spoken_digits.compose(parts, (300, 200, 100), 0.0, np.random.default_rng(0))
  assert len(quiet) == 2100 and not quiet[:300].any() and not quiet[1300:1500].any()
  np.testing.assert_array_equal(quiet[300:1300], 0.5)
  noisy = spoken_digits.compose(parts, (3000, 200, 3000), 0.1, np.random.default_rng(0))
  assert np.std(noisy[:3000]) == pytest.approx(0.05, rel=0.1)  # 0.1 x the parts' RMS 0.5
  again = spoken_digits.compose(parts, (3000, 200, 3000), 0.1, np.random.default_rng(0))
  np.testing.assert_array_equal(noisy, again)


def test_feature_batches(built):
  dataset = built(WORDS)
  source = dataset.source("dev")
  batches = list(make_pipeline(dataset, "dev", batch_size=3, **ONE))
  assert len(batches) == 2
  for b, batch in enumerate(batches):
    assert batch["inputs"].dtype == np.float32 and batch["inputs"].shape[::2] == (3, 80)
    assert batch["inputs"].shape[1] >= batch["input_lengths"].max()
    for row in range(3):
      i = 3 * b + row
      if i >= len(source):  # padding row
        assert batch["index"][row] == -1 and batch["weights"][row] == 0
        assert not batch["inputs"][row].any() and batch["input_lengths"][row] == 0
        continue
      record = source[i]
      frames = len(record["features"])
      assert batch["index"][row] == i and batch["weights"][row] == 1
      assert batch["input_lengths"][row] == frames
      np.testing.assert_array_equal(batch["inputs"][row, :frames], record["features"])
      assert not batch["inputs"][row, frames:].any()
      ids = dataset.target_vocab.encode(record["targets"]) + [EOS_ID]
      assert batch["target_lengths"][row] == len(ids)
      assert batch["targets"][row, :len(ids)].tolist() == ids
      assert batch["decoder_inputs"][row, :len(ids)].tolist() == [BOS_ID] + ids[:-1]
      assert not batch["targets"][row, len(ids):].any()
  train = next(iter(make_pipeline(dataset, "train", batch_size=4, seed=1, **ONE)))
  assert train["inputs"].shape[::2] == (4, 80) and (train["weights"] == 1).all()
  with pytest.raises(DataError, match="feature inputs, which take no EOS"):
    make_pipeline(dataset, "dev", batch_size=3, process_index=0, process_count=1)


def test_same_seed_same_data(built, manual, tmp_path):
  dataset = built(WORDS)
  again = registry.get_dataset("spoken_digits", data_dir=str(tmp_path), manual_dir=manual,
                               config=WORDS)
  for split in dataset.splits:
    assert again.texts(split) == dataset.texts(split)
    np.testing.assert_array_equal(again.source(split)[0]["features"],
                                  dataset.source(split)[0]["features"])
  assert again.metadata["recordings_sha256"] == dataset.metadata["recordings_sha256"]
  pool = spoken_digits.find_recordings(manual)
  plan = lambda **kw: spoken_digits.plan_split(
      pool, spoken_digits.make_config("plan", sizes=SIZES, **kw), "train")
  assert plan(seed=0) == plan(seed=0) and plan(seed=0) != plan(seed=1)


def _bad_dir(tmp_path, bad_name=None, bad_audio=None, indices=(0, 5, 10)) -> str:
  directory = _write_recordings(tmp_path / "recordings", speakers=("alice",), indices=indices)
  if bad_name:
    _write_wav(os.path.join(directory, bad_name), *bad_audio)
  return directory


def _write_text(directory: str, name: str) -> str:
  with open(os.path.join(directory, name), "w") as f:
    f.write("not audio\n")
  return directory


TONE_8K = (_tone(1, 0, 0), 8000)
BAD_INPUTS = {
    "missing dir": (lambda p: str(p / "nowhere"), "nowhere is not a directory"),
    "empty dir": (lambda p: str(p), r"No FSDD recordings \(\*\.wav\) in"),
    "16 kHz": (lambda p: _bad_dir(p, "3_alice_7.wav", (_tone(3, 0, 0), 16000)),
               r"3_alice_7\.wav: 1 channel\(s\) at 16000 Hz.*expected mono 8000 Hz"),
    "stereo": (lambda p: _bad_dir(p, "3_alice_7.wav", (np.zeros((800, 2)), 8000)),
               r"3_alice_7\.wav: 2 channel\(s\) at 8000 Hz.*expected mono 8000 Hz"),
    "bad name": (lambda p: _bad_dir(p, "3-alice-7.wav", TONE_8K),
                 r"3-alice-7\.wav: expected a name \{digit\}_\{speaker\}_\{index\}\.wav"),
    "not a WAV": (lambda p: _write_text(_bad_dir(p), "3_alice_7.wav"),
                  r"3_alice_7\.wav: not a readable WAV file"),
    "no test pool": (lambda p: _bad_dir(p, indices=(5, 10)),
                     "no recordings with index 0-4 for the test split"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_are_one_line_errors_and_build_nothing(tmp_path, case):
  make_dir, message = BAD_INPUTS[case]
  (tmp_path / "in").mkdir()
  manual = make_dir(tmp_path / "in")
  data_dir = tmp_path / "data"
  with pytest.raises(DataError, match=message) as error:
    registry.get_dataset("spoken_digits", data_dir=str(data_dir), manual_dir=manual,
                         config=WORDS)
  assert "\n" not in str(error.value)
  if case in ("missing dir", "empty dir"):
    assert isinstance(error.value, MissingDataError)
    assert "Jakobovski/free-spoken-digit-dataset" in str(error.value)
  assert not data_dir.exists()


def test_held_out_speaker_must_be_there(tmp_path):
  manual = _bad_dir(tmp_path)
  config = spoken_digits.make_config("unseen_x", sizes=SIZES, held_out="carol")
  with pytest.raises(DataError, match="no recordings of the held-out speaker 'carol'"):
    registry.get_dataset("spoken_digits", data_dir=str(tmp_path / "data"), manual_dir=manual,
                         config=config)
  assert not (tmp_path / "data").exists()


def test_prepare_cli_without_recordings(tmp_path):
  stderr = io.StringIO()
  with redirect_stderr(stderr):
    rc = prepare.main(["spoken_digits/words", "--data_dir", str(tmp_path / "data")])
  lines = stderr.getvalue().strip().splitlines()
  assert rc == 1 and len(lines) == 1 and lines[0].startswith("error: No FSDD recordings")
  assert "--manual_dir" in lines[0] and not (tmp_path / "data").exists()
