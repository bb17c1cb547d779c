"""`spoken_digits`: connected spoken digits composed from the Free Spoken Digit Dataset (FSDD).

Source: FSDD's `recordings/` directory (GitHub repository
Jakobovski/free-spoken-digit-dataset, or the files TFDS's `spoken_digit` downloads),
passed as the manual dir (`prepare --manual_dir`, `data.manual_dir`): mono 8 kHz WAV
files `{digit}_{speaker}_{index}.wav`, 50 recordings of each digit per speaker. Other
files are ignored; every `.wav` is checked (name, sample rate, channels) before
anything is built. Licence CC BY-SA 4.0, Zohar Jackson et al.

Recordings are split by FSDD's rule, so no test recording is heard in training:
index 0-4 test, 5-9 dev, 10 and up train. Each utterance joins 1-7 recordings drawn
(seeded) from its split's pool, with 50-250 ms of silence between them, a short
silence at both ends and Gaussian noise about 30 dB below the speech, so whole
sequences are new too. `unseen_speaker` keeps one speaker out of train and dev:
its `test` is that speaker (every index), `test_seen` the other speakers' index 0-4.

A record:

  inputs      Text, the recordings played ("7_jackson_12 3_theo_40")
  targets     Text, "seven three" (words configs) or "73" (digits)
  references  Sequence(Text), [targets]
  features    float16 [frames, 80]: log-mel filterbanks (25 ms windows, 10 ms hop,
              frames = 1 + samples // 80), each bin normalised to mean 0 and
              variance 1 over the utterance

Split stats count frames as the input length. Generation is a pure function of the
recordings and the config (seed, sizes, ranges).
"""
import dataclasses
import functools
import hashlib
import io
import os
import re
from typing import NamedTuple, Sequence

import numpy as np
import soundfile
import tensorflow_datasets as tfds

from attention_jax.data.errors import DataError, MissingDataError, first_line
from attention_jax.data.text_builder import TextToTextBuilder, manual_dir_or_none

SAMPLE_RATE = 8000
FEATURE_DIM = 80       # mel bins
WINDOW = 200           # samples: 25 ms
HOP = 80               # samples: 10 ms
N_FFT = 512            # 256 would do; 128 leaves mel filters empty at 8 kHz
FMIN = 20.0
LOG_FLOOR = 1e-10      # of the mel power, before the log
STD_FLOOR = 1e-5       # a constant bin is not blown up by the normalisation
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPLIT_IDS = {"train": 0, "dev": 1, "test": 2, "test_seen": 3}
_NAME = re.compile(r"([0-9])_([A-Za-z]+)_([0-9]+)\.wav", re.IGNORECASE)
GET_HINT = (
    "Get FSDD's recordings: the `recordings/` directory of the GitHub repository "
    "Jakobovski/free-spoken-digit-dataset (or the files TFDS's `spoken_digit` downloads), "
    "and pass that directory as --manual_dir (data.manual_dir).")


@dataclasses.dataclass(eq=False)
class SpokenDigitsConfig(tfds.core.BuilderConfig):
  target: str = "words"          # "words" ("seven three") or "digits" ("73")
  held_out: str | None = None    # speaker kept out of train and dev (unseen_speaker)
  sizes: tuple = (("train", 4000), ("dev", 500), ("test", 500), ("test_seen", 500))
  min_digits: int = 1
  max_digits: int = 7
  gap_ms: tuple = (50, 250)      # silence between recordings, uniform in this range
  edge_ms: tuple = (50, 150)     # silence before the first and after the last
  noise: float = 0.03            # noise RMS / speech RMS (0.03: 30 dB below); 0: none
  seed: int = 0


def make_config(name: str, **kwargs) -> SpokenDigitsConfig:
  """A config; give a new `name` whenever a field differs from a named config's."""
  return SpokenDigitsConfig(name=name, description="See the module docstring.", **kwargs)


class Recording(NamedTuple):
  path: str
  digit: int
  speaker: str
  index: int
  samples: int

  @property
  def stem(self) -> str:
    return f"{self.digit}_{self.speaker}_{self.index}"


class Utterance(NamedTuple):
  """One record before its audio is made (the text fields are those of text_builder.Row)."""
  inputs: str
  targets: str
  references: Sequence[str]
  recordings: tuple        # Recording, in the order played
  silences: tuple          # samples before, between and after the recordings
  noise_key: tuple         # seeds the utterance's noise

  @property
  def samples(self) -> int:
    return sum(r.samples for r in self.recordings) + sum(self.silences)


def num_frames(samples: int) -> int:
  """Frames of `log_mel` (librosa centres the first window on sample 0)."""
  return 1 + samples // HOP


def _read_header(path: str) -> Recording:
  name = os.path.basename(path)
  match = _NAME.fullmatch(name)
  if not match:
    raise DataError(f"{path}: expected a name {{digit}}_{{speaker}}_{{index}}.wav like "
                    "7_jackson_12.wav (FSDD's recordings/)")
  try:
    info = soundfile.info(path)
  except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
    raise DataError(f"{path}: not a readable WAV file ({first_line(e)})") from None
  if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.frames == 0:
    raise DataError(f"{path}: {info.channels} channel(s) at {info.samplerate} Hz, "
                    f"{info.frames} samples; expected mono {SAMPLE_RATE} Hz audio (FSDD's "
                    "recordings/)")
  return Recording(path, int(match[1]), match[2], int(match[3]), info.frames)


def find_recordings(manual_dir) -> list[Recording]:
  """Every `.wav` of `manual_dir`, checked and sorted by name; other files are ignored."""
  directory = os.fspath(manual_dir) if manual_dir is not None else None
  if directory is None or not os.path.isdir(directory):
    where = f"{directory} is not a directory" if directory else "no manual dir was given"
    raise MissingDataError(f"No FSDD recordings: {where}. {GET_HINT}")
  names = sorted(n for n in os.listdir(directory) if n.lower().endswith(".wav")
                 and os.path.isfile(os.path.join(directory, n)))
  if not names:
    raise MissingDataError(f"No FSDD recordings (*.wav) in {directory}. {GET_HINT}")
  return [_read_header(os.path.join(directory, n)) for n in names]


def _pool(index: int) -> str:
  """FSDD's split rule by recording index."""
  return "test" if index < 5 else "dev" if index < 10 else "train"


def make_pools(recordings: list[Recording], config: SpokenDigitsConfig,
               directory: str) -> dict[str, list[Recording]]:
  """split -> the recordings its utterances draw from; raises DataError for an empty one."""
  if config.held_out is None:
    pools = {s: [r for r in recordings if _pool(r.index) == s] for s in ("train", "dev", "test")}
  else:
    speakers = sorted({r.speaker for r in recordings})
    if config.held_out not in speakers:
      raise DataError(f"{directory}: no recordings of the held-out speaker "
                      f"{config.held_out!r} (found {', '.join(speakers)})")
    seen = [r for r in recordings if r.speaker != config.held_out]
    pools = {s: [r for r in seen if _pool(r.index) == s] for s in ("train", "dev")}
    pools["test"] = [r for r in recordings if r.speaker == config.held_out]
    pools["test_seen"] = [r for r in seen if _pool(r.index) == "test"]
  indices = {"train": "10 and up", "dev": "5-9", "test": "0-4", "test_seen": "0-4"}
  for split, pool in pools.items():
    if not pool:
      who = f" of speakers other than {config.held_out!r}" if config.held_out else ""
      raise DataError(f"{directory}: no recordings{who} with index {indices[split]} for the "
                      f"{split} split; FSDD's recordings/ has index 0-49 of every digit")
  return pools


def check_source(manual_dir, config=None) -> list[Recording]:
  """Checks the recordings and the config's pools before TFDS creates any directory."""
  recordings = find_recordings(manual_dir)
  config = config or SpokenDigits.BUILDER_CONFIGS[0]
  make_pools(recordings, config, os.fspath(manual_dir))
  return recordings


def target_text(digits: Sequence[int], target: str) -> str:
  if target == "words":
    return " ".join(WORDS[d] for d in digits)
  if target == "digits":
    return "".join(str(d) for d in digits)
  raise ValueError(f"Unknown spoken_digits target {target!r}; known: words, digits.")


def _ms_to_samples(rng: np.random.Generator, ms_range: tuple, n: int) -> list[int]:
  lo, hi = ms_range
  return [int(round(ms * SAMPLE_RATE / 1000)) for ms in rng.uniform(lo, hi, size=n)]


def plan_split(pool: list[Recording], config: SpokenDigitsConfig, split: str) -> list[Utterance]:
  """The utterances of one split; deterministic in (config, pool, split)."""
  if not 1 <= config.min_digits <= config.max_digits:
    raise ValueError(f"Bad digit range {(config.min_digits, config.max_digits)}.")
  sizes = dict(config.sizes)
  if split not in sizes:
    raise ValueError(f"Config {config.name!r} gives no size for split {split!r}: {sizes}.")
  rng = np.random.default_rng([config.seed, _SPLIT_IDS[split]])
  utterances = []
  for i in range(sizes[split]):
    n = int(rng.integers(config.min_digits, config.max_digits + 1))
    played = tuple(pool[j] for j in rng.integers(0, len(pool), size=n))
    edges = _ms_to_samples(rng, config.edge_ms, 2)
    silences = (edges[0], *_ms_to_samples(rng, config.gap_ms, n - 1), edges[1])
    target = target_text([r.digit for r in played], config.target)
    utterances.append(Utterance(" ".join(r.stem for r in played), target, [target], played,
                                silences, (config.seed, _SPLIT_IDS[split], i)))
  return utterances


def compose(parts: Sequence[np.ndarray], silences: Sequence[int], noise: float,
            rng: np.random.Generator) -> np.ndarray:
  """float32 audio: silences[0], parts[0], silences[1], ..., plus noise of RMS
  `noise` times the parts' RMS."""
  pieces = [np.zeros(silences[0], np.float32)]
  for part, silence in zip(parts, silences[1:]):
    pieces += [part, np.zeros(silence, np.float32)]
  audio = np.concatenate(pieces)
  if noise > 0:
    speech = np.concatenate(parts)
    rms = float(np.sqrt(np.mean(np.square(speech, dtype=np.float64))))
    audio += (noise * rms * rng.standard_normal(len(audio))).astype(np.float32)
  return audio


@functools.lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
  import librosa  # pylint: disable=g-import-not-at-top  (slow; only builds need it)
  return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=FEATURE_DIM, fmin=FMIN,
                             fmax=SAMPLE_RATE / 2)


def log_mel(audio: np.ndarray) -> np.ndarray:
  """float32 [num_frames(len(audio)), 80]: log-mel filterbanks, normalised per bin.

  The mel power is librosa.feature.melspectrogram's (hann window of WINDOW samples
  zero-padded to N_FFT, centred frames, power 2, Slaney mel filters from FMIN to 4 kHz);
  its einsum is slow here, so the filter bank is applied with a plain matrix product.
  """
  import librosa  # pylint: disable=g-import-not-at-top
  spectrum = librosa.stft(audio, n_fft=N_FFT, hop_length=HOP, win_length=WINDOW,
                          window="hann", center=True, pad_mode="constant")
  power = np.square(np.abs(spectrum))
  logmel = np.log(np.maximum(_mel_basis() @ power, LOG_FLOOR)).T
  mean, std = logmel.mean(axis=0), logmel.std(axis=0)
  return ((logmel - mean) / np.maximum(std, STD_FLOOR)).astype(np.float32)


def file_features(path: str) -> np.ndarray:
  """`log_mel` of an audio file as the model hears it: mono, resampled to 8 kHz (predict's
  inputs; FSDD's own recordings are already both). A DataError names an unreadable file."""
  try:
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
  except (RuntimeError, OSError) as e:  # soundfile's LibsndfileError is a RuntimeError
    raise DataError(f"{path}: not a readable audio file ({first_line(e)})") from None
  audio = audio.mean(axis=1)
  if audio.size == 0:
    raise DataError(f"{path}: the audio file holds no samples")
  if rate != SAMPLE_RATE:
    import librosa  # pylint: disable=g-import-not-at-top
    audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE)
  return log_mel(audio)


def _load(recordings: list[Recording]) -> tuple[dict[str, np.ndarray], str]:
  """(stem -> float32 samples, SHA-256 over every file's name and bytes)."""
  audio, digest = {}, hashlib.sha256()
  for r in recordings:
    with open(r.path, "rb") as f:
      data = f.read()
    digest.update(os.path.basename(r.path).encode() + b"\0" + hashlib.sha256(data).digest())
    audio[r.stem], _ = soundfile.read(io.BytesIO(data), dtype="float32")
  return audio, digest.hexdigest()


def _audio_stats(utterances: list[Utterance]) -> dict:
  """Frame lengths (as the input lengths) and durations of a split."""
  frames = np.array([num_frames(u.samples) for u in utterances] or [0])
  seconds = sum(u.samples for u in utterances) / SAMPLE_RATE
  return {"max_input_length": int(frames.max()),
          "mean_input_length": round(float(frames.mean()), 3),
          "mean_digits": round(float(np.mean([len(u.recordings) for u in utterances] or [0])), 3),
          "audio_seconds": round(seconds, 1), "audio_hours": round(seconds / 3600, 3)}


class SpokenDigits(TextToTextBuilder):
  """Connected spoken digits from FSDD recordings (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [make_config("words"), make_config("digits", target="digits"),
                     make_config("unseen_speaker", held_out="lucas"),
                     # Seconds to build: smoke runs and trying the pipeline, not results.
                     make_config("small", max_digits=4,
                                 sizes=(("train", 256), ("dev", 32), ("test", 32)))]
  MANUAL_DOWNLOAD_INSTRUCTIONS = GET_HINT
  DESCRIPTION = __doc__
  HOMEPAGE = "https://github.com/Jakobovski/free-spoken-digit-dataset"
  CITATION = ("Zohar Jackson et al., Free Spoken Digit Dataset (FSDD), 2016, "
              "https://github.com/Jakobovski/free-spoken-digit-dataset")

  def _extra_features(self) -> dict:
    # Raw float16 bytes: TFDS would store a plain float16 tensor as float32 values, twice
    # the size and 100 times slower to write.
    return {"features": tfds.features.Tensor(shape=(None, FEATURE_DIM), dtype=np.float16,
                                             encoding=tfds.features.Encoding.BYTES)}

  def _make_splits(self, dl_manager):
    config = self.builder_config
    directory = manual_dir_or_none(dl_manager)
    recordings = find_recordings(directory)
    pools = make_pools(recordings, config, os.fspath(directory))
    self._audio, digest = _load(recordings)
    utterances = {s: plan_split(pool, config, s) for s, pool in pools.items()}
    extra = {
        "sample_rate": SAMPLE_RATE, "feature_dim": FEATURE_DIM, "hop_ms": 1000 * HOP // SAMPLE_RATE,
        "window_ms": 1000 * WINDOW // SAMPLE_RATE, "n_fft": N_FFT, "fmin": FMIN,
        "target": config.target, "held_out": config.held_out, "seed": config.seed,
        "digits": [config.min_digits, config.max_digits], "gap_ms": list(config.gap_ms),
        "edge_ms": list(config.edge_ms), "noise": config.noise,
        "speakers": sorted({r.speaker for r in recordings}),
        "recordings": {s: len(pool) for s, pool in pools.items()},
        "recordings_sha256": digest,
    }
    return utterances, extra

  def _split_stats(self, rows):
    return _audio_stats(rows)

  def _generate_examples(self, rows):
    for i, u in enumerate(rows):
      audio = compose([self._audio[r.stem] for r in u.recordings], u.silences,
                      self.builder_config.noise, np.random.default_rng(u.noise_key))
      yield i, {"inputs": u.inputs, "targets": u.targets, "references": list(u.references),
                "features": log_mel(audio).astype(np.float16)}
