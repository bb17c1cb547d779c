"""Data faults: each is one `error:` line naming the file and the fix, exit code 2, nothing written.

A tiny algorithmic/copy data set is built once per module; each test damages a
copy of it (truncated, emptied, removed or overwritten files) and runs the CLI
or `get_dataset` on that copy.
"""
import gzip
import os
import shutil
import subprocess
import sys
import threading

import pytest

from attention_jax.data import DamagedDataError, DataError, DataFormatError, prepare, registry

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_data_faults")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NAME = "algorithmic/copy"
SHARD = "algorithmic-train.array_record-00000-of-00001"
CLI = [sys.executable, "-m", "attention_jax.main",
       "--config=experiments/g2p_attention.py:smoke=True", f"--config.data.name={NAME}",
       "--config.evals.dev.examples=16", "--config.evals.dev.heatmaps=0",
       "--config.evals.dev.metrics=sequence_accuracy,token_error_rate"]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A prepared algorithmic/copy data dir (about 1 s to build)."""
  root = str(tmp_path_factory.mktemp("faults") / "data")
  registry.get_dataset(NAME, data_dir=root)
  return root


@pytest.fixture
def data_copy(built, tmp_path):
  """(data dir, version dir) of a fresh copy of the prepared data set."""
  root = str(tmp_path / "data")
  shutil.copytree(built, root)
  return root, os.path.join(root, "algorithmic", "copy", "1.0.0")


# The CLI as if the data were damaged after the run read it whole for its data hash.
CLI_DAMAGED_LATER = [sys.executable, "-c",
                     "import runpy; from attention_jax.train import provenance; "
                     "provenance.data_hash = lambda dataset: 'read before the damage'; "
                     "runpy.run_module('attention_jax.main', run_name='__main__')", *CLI[3:]]


def run_cli(data_dir: str, workdir: str, *flags: str, cli=CLI) -> tuple[int, str]:
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  done = subprocess.run(cli + [f"--workdir={workdir}", *flags], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  return done.returncode, done.stderr


def assert_one_line(rc: int, stderr: str, workdir: str, *needles: str) -> None:
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert rc == 2, stderr
  assert "Traceback" not in stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), stderr
  for needle in needles:
    assert needle in lines[0], lines[0]
  assert not os.path.exists(workdir)


def force_hint(root: str) -> str:
  return f"rerun `python -m attention_jax.data.prepare {NAME} --force --data_dir {root}`"


def test_cli_truncated_shard(data_copy, tmp_path):
  root, version_dir = data_copy
  shard = os.path.join(version_dir, SHARD)
  os.truncate(shard, os.path.getsize(shard) // 2)
  workdir = str(tmp_path / "run")
  assert_one_line(*run_cli(root, workdir), workdir, shard, "truncated", force_hint(root))


def test_cli_damaged_dataset_info(data_copy, tmp_path):
  root, version_dir = data_copy
  info = os.path.join(version_dir, "dataset_info.json")
  with open(info, "r+b") as f:
    f.truncate(40)
  workdir = str(tmp_path / "run")
  assert_one_line(*run_cli(root, workdir), workdir, info, "damaged", force_hint(root))


def test_cli_data_dir_is_a_file(tmp_path):
  path = tmp_path / "data"
  path.write_text("not a directory\n")
  workdir = str(tmp_path / "run")
  assert_one_line(*run_cli(str(path), workdir), workdir, str(path), "is a file",
                  "ATTENTION_JAX_DATA_DIR")


def _make_read_only(path: str) -> bool:
  """Root ignores permission bits: it gets the immutable attribute instead."""
  if os.geteuid() != 0:
    os.chmod(path, 0o555)
    return True
  done = subprocess.run(["chattr", "+i", path], capture_output=True, check=False)
  return done.returncode == 0


def _make_writable(path: str) -> None:
  if os.geteuid() == 0:
    subprocess.run(["chattr", "-i", path], capture_output=True, check=False)
  os.chmod(path, 0o755)


def test_cli_read_only_empty_data_dir(tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  if not _make_read_only(str(data_dir)):
    pytest.skip("cannot make a directory read-only here (no chattr)")
  try:
    workdir = str(tmp_path / "run")
    rc, stderr = run_cli(str(data_dir), workdir)
  finally:
    _make_writable(str(data_dir))
  assert_one_line(rc, stderr, workdir, f"Cannot build {NAME} in data dir {data_dir}",
                  "writable")
  assert not any(data_dir.iterdir())


def test_cli_random_bytes_freedict(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  source = manual / "freedict-deu-eng.dict.dz"
  source.write_bytes(os.urandom(4096))
  data_dir, workdir = tmp_path / "data", str(tmp_path / "run")
  rc, stderr = run_cli(str(data_dir), workdir, "--config.data.name=freedict_deu_eng",
                       f"--config.data.manual_dir={manual}")
  assert_one_line(rc, stderr, workdir, f"{source}:1: unreadable", "BadGzipFile",
                  "manual_dir")
  # TFDS removed its incomplete build: no data set, nothing half-written.
  assert os.listdir(data_dir / "freedict_deu_eng") == [".1.0.0.lock"]


def test_truncated_freedict_gzip(tmp_path):
  text = "".join(f'      "Satz {i}."  - Sentence {i}.\n' for i in range(2000)).encode()
  source = tmp_path / "freedict-deu-eng.dict.dz"
  source.write_bytes(gzip.compress(text)[:3000])
  with pytest.raises(DataFormatError, match=rf"{source}:\d+: unreadable \(EOFError"):
    registry.get_dataset("freedict_deu_eng", data_dir=str(tmp_path / "data"),
                         manual_dir=str(tmp_path))


@pytest.mark.parametrize("fault, words", [
    ("empty", "is empty (0 bytes)"), ("missing", "is missing"),
    ("swapped", "has 1000 records where dataset_info.json says 20000")])
def test_shard_faults(data_copy, fault, words):
  root, version_dir = data_copy
  shard = os.path.join(version_dir, SHARD)
  if fault == "empty":
    os.truncate(shard, 0)
  elif fault == "missing":
    os.remove(shard)
  else:
    shutil.copy(os.path.join(version_dir, SHARD.replace("train", "dev")), shard)
  with pytest.raises(DamagedDataError) as caught:
    registry.get_dataset(NAME, data_dir=root)
  assert str(caught.value) == f"{shard} {words}; {force_hint(root)}"


@pytest.mark.parametrize("content", [b"", b'{"mode": "ch', b'{"mode": "words", "symbols": []}'])
def test_damaged_vocabulary(data_copy, content):
  root, version_dir = data_copy
  vocab = os.path.join(version_dir, "vocab_inputs.json")
  with open(vocab, "wb") as f:
    f.write(content)
  with pytest.raises(DamagedDataError, match="Vocabulary file .* is damaged") as caught:
    registry.get_dataset(NAME, data_dir=root)
  message = str(caught.value)
  assert vocab in message and message.endswith(force_hint(root)) and "\n" not in message


def test_damaged_cached_chars_vocabulary(data_copy):
  """tokenizer=chars builds its vocabulary on first use: the fix is to delete it."""
  root, version_dir = data_copy
  registry.get_dataset(NAME, data_dir=root, tokenizer="chars")
  cached = os.path.join(version_dir, "chars_targets.json")
  os.truncate(cached, 5)
  with pytest.raises(DamagedDataError, match=f"{cached} is damaged .*; delete it"):
    registry.get_dataset(NAME, data_dir=root, tokenizer="chars")
  os.remove(cached)
  assert registry.get_dataset(NAME, data_dir=root, tokenizer="chars").target_vocab.size > 4


def test_damage_inside_a_shard_names_it_when_read(data_copy):
  """A footer-intact shard with bytes overwritten mid-file: found when its records are read."""
  root, version_dir = data_copy
  shard = os.path.join(version_dir, SHARD)
  with open(shard, "r+b") as f:
    f.seek(os.path.getsize(shard) // 3)
    f.write(b"\xff" * 4096)
  dataset = registry.get_dataset(NAME, data_dir=root)  # the open-time check reads footers only
  source = dataset.source("train")
  with pytest.raises(DamagedDataError) as caught:
    source.getitems(range(len(source)))
  assert str(caught.value).startswith(f"{shard} is damaged (RuntimeError: Corrupted")
  assert str(caught.value).endswith(force_hint(root))
  assert dataset.source("dev").getitems([0, 999])  # other splits still read


def damage_middle_third(shard: str) -> None:
  size = os.path.getsize(shard)
  with open(shard, "r+b") as f:  # the middle third: shuffled reads reach it within steps
    f.seek(size // 3)
    f.write(b"\xff" * (size // 3))


def test_cli_damage_inside_a_shard_is_found_before_anything_is_written(data_copy, tmp_path):
  """The run's data hash reads every record: a shard damaged inside (footer intact) stops
  the run with one line naming it, before the workdir exists."""
  root, version_dir = data_copy
  shard = os.path.join(version_dir, SHARD)
  damage_middle_third(shard)
  workdir = str(tmp_path / "run")
  assert_one_line(*run_cli(root, workdir), workdir, f"{shard} is damaged (RuntimeError: ",
                  force_hint(root))


def test_cli_damage_found_while_training_keeps_the_checkpoints(data_copy, tmp_path):
  """Damage after the run's start (here: after its data hash, which is stubbed to have read
  the data intact), found when training reads the damaged records: the run stops with one
  line that names the shard, the fix and the checkpoint to resume from; exit code 2 as for
  any data fault, but the workdir (already written) is kept."""
  root, version_dir = data_copy
  shard = os.path.join(version_dir, SHARD)
  damage_middle_third(shard)
  workdir = str(tmp_path / "run")
  rc, stderr = run_cli(root, workdir, "--config.train.steps=200",
                       "--config.train.checkpoint_every=1", cli=CLI_DAMAGED_LATER)
  errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
  assert rc == 2 and "Traceback" not in stderr, stderr[-3000:]
  assert len(errors) == 1 and errors[0].startswith(f"error: {shard} is damaged"), errors
  assert force_hint(root) in errors[0]
  assert errors[0].endswith("rerun to resume once the data is rebuilt"), errors[0]
  assert os.path.exists(os.path.join(workdir, "config.json"))


def test_force_rebuilds_a_damaged_data_set(data_copy, capsys):
  root, version_dir = data_copy
  with open(os.path.join(version_dir, "dataset_info.json"), "w") as f:
    f.write("{")
  os.truncate(os.path.join(version_dir, SHARD), 100)
  with pytest.raises(DamagedDataError):
    registry.get_dataset(NAME, data_dir=root)
  assert prepare.main([NAME, "--force", "--data_dir", root]) == 0
  assert f"{NAME}: train 20,000, dev 1,000, test 1,000 records" in capsys.readouterr().out
  assert len(registry.get_dataset(NAME, data_dir=root).source("train")) == 20_000


def test_stale_incomplete_dirs_are_removed(built, tmp_path, capsys):
  """A killed prepare leaves incomplete.*: the next build, or open, removes it."""
  root = str(tmp_path / "data")
  stale = os.path.join(root, "algorithmic", "copy", "incomplete.ABC123_1.0.0")
  os.makedirs(stale)
  shutil.copy(os.path.join(built, "algorithmic", "copy", "1.0.0", SHARD), stale)
  registry.get_dataset(NAME, data_dir=root)  # builds: under the lock
  assert not os.path.exists(stale)
  os.makedirs(stale)
  registry.get_dataset(NAME, data_dir=root)  # already built: removed when no build runs
  assert not os.path.exists(stale)
  assert "left by an interrupted build" in capsys.readouterr().err


def test_two_builds_at_once_build_once(tmp_path):
  root = str(tmp_path / "data")
  results, errors = [], []

  def build():
    try:
      results.append(registry.prepare("algorithmic/reverse", data_dir=root).data_dir)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=build) for _ in range(2)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors and len(results) == 2
  assert sorted(os.listdir(os.path.dirname(results[0]))) == [".1.0.0.lock", "1.0.0"]


def test_version_dir_without_dataset_info(data_copy):
  """A version dir that no build finished (TFDS renames complete dirs only)."""
  root, version_dir = data_copy
  os.remove(os.path.join(version_dir, "dataset_info.json"))
  with pytest.raises(DamagedDataError, match=f"{version_dir} has no dataset_info.json; "
                     r"rerun `python -m attention_jax\.data\.prepare"):
    registry.get_dataset(NAME, data_dir=root)


def test_version_dir_matches_tfds(built):
  for name in (NAME, "algorithmic/sort"):
    base, config = registry.parse_name(name)
    expected = registry.make_builder(name, data_dir=built).data_dir
    spec = registry.DATASETS[base]
    assert registry._version_dir(spec, config, built) == expected  # pylint: disable=protected-access


def test_errors_are_data_errors():
  assert issubclass(DamagedDataError, DataError)
