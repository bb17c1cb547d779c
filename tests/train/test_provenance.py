"""Runs say what produced them: versions, platform, XLA flags, git state and a data hash in
config.json and result.json; the report's mismatch warnings; deterministic XLA flags."""
import importlib.metadata
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from attention_jax.train import provenance

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
G2P = os.path.join(ROOT, "experiments", "g2p_attention.py")
pytestmark = pytest.mark.xdist_group("test_provenance")  # one worker: `run` is run once


def _example(features: list[tuple[str, bytes]]) -> bytes:
  """A serialised tf.train.Example with its features on the wire in the given order.
  Protobuf merges concatenated messages, so one-feature Examples joined are one Example;
  upb orders a map by a hash that varies between processes, which is how two TFDS builds
  of the same data differ in their bytes."""
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  parts = []
  for key, value in features:
    example = tf_example_pb2.Example()
    example.features.feature[key].bytes_list.value.append(value)
    parts.append(example.SerializeToString())
  return b"".join(parts)


def _fake_dataset(tmp_path, contents):
  """A stand-in with TFDS's `builder.info.splits[name].filepaths` over array_record files
  it writes: `contents` maps a split to its shards, each a list of examples."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  tmp_path.mkdir()
  splits = {}
  for split, shards in contents.items():
    paths = []
    for i, examples in enumerate(shards):
      path = tmp_path / f"{split}-{i}"
      writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
      for example in examples:
        writer.write(_example(example))
      writer.close()
      paths.append(path)
    splits[split] = types.SimpleNamespace(filepaths=paths)
  info = types.SimpleNamespace(splits=splits)
  return types.SimpleNamespace(name="fake/x", builder=types.SimpleNamespace(info=info))


A, B, C = ([("inputs", b"ab"), ("targets", b"AH B")], [("inputs", b"cd"), ("targets", b"S IY")],
           [("inputs", b"ef"), ("targets", b"EH F")])


def test_data_hash_changes_with_any_record_its_order_and_any_split_name(tmp_path):
  base = {"train": [[A, B]], "test": [[C]]}
  first = provenance.data_hash(_fake_dataset(tmp_path / "a", base))
  assert provenance.data_hash(_fake_dataset(tmp_path / "b", base)) == first
  changed_c = [("inputs", b"ef"), ("targets", b"EH V")]
  for i, changed in enumerate(({"train": [[A, B]], "test": [[changed_c]]},
                               {"train": [[B, A]], "test": [[C]]},
                               {"train": [[A, B]], "dev": [[C]]},
                               {"train": [[A], [B]], "test": [[C]]},
                               {"train": [[A, B, B]], "test": [[C]]})):
    assert provenance.data_hash(_fake_dataset(tmp_path / f"c{i}", changed)) != first, changed
  assert provenance.data_hash(types.SimpleNamespace(name="generated")) is None


def test_data_hash_ignores_the_order_features_were_serialised_in(tmp_path):
  swapped = [list(reversed(example)) for example in (A, B)]
  first = _fake_dataset(tmp_path / "a", {"train": [[A, B]]})
  second = _fake_dataset(tmp_path / "b", {"train": [swapped]})
  files = [d.builder.info.splits["train"].filepaths[0] for d in (first, second)]
  assert files[0].read_bytes() != files[1].read_bytes()  # what two TFDS builds can differ in
  assert provenance.data_hash(first) == provenance.data_hash(second)


def test_mismatches_name_the_field_and_the_rows():
  same = {"versions": {"jax": "0.10.2"}, "platform": "cpu", "device_kind": "cpu",
          "data": {"records_sha256": "aa"}}
  assert provenance.mismatches({"a": same, "b": dict(same)}) == []
  other = {**same, "versions": {"jax": "0.10.1"}, "data": {"records_sha256": "bb"}}
  assert provenance.mismatches({"a": same, "b": dict(same), "c": other, "d": None}) == [
      "no provenance recorded for: d",
      "rows differ in jax version: 0.10.2 (a, b); 0.10.1 (c)",
      "rows differ in data hash: aa (a, b); bb (c)"]


def test_mismatches_skip_the_old_file_hash_that_two_builds_disagree_on():
  old = {"versions": {"jax": "0.10.2"}, "platform": "cpu", "device_kind": "cpu",
         "data": {"sha256": "aa"}}
  new = {**old, "data": {"records_sha256": "cc"}}
  assert provenance.mismatches({"a": old, "b": {**old, "data": {"sha256": "bb"}}, "c": new}) == []


def test_set_deterministic_adds_the_flag_once(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  provenance.set_deterministic()
  provenance.set_deterministic()
  assert os.environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=2",
                                             *provenance.DETERMINISTIC_FLAGS]


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data_dir):
  """One smoke run, from a relative --workdir, with train.deterministic and a hidden size
  the config does not default to: (the process, its absolute workdir)."""
  cwd = tmp_path_factory.mktemp("provenance")
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=shared_data_dir, JAX_PLATFORMS="cpu",
             PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "attention_jax.main", f"--config={G2P}:smoke",
       "--workdir=run", "--config.data.name=algorithmic/copy",
       "--config.evals.dev.metrics=sequence_accuracy", "--config.train.deterministic=True",
       "--config.model.hidden_dim=24", "--config.evals.dev.heatmaps=0"],
      capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc, cwd / "run"


def test_a_run_records_its_provenance(run, shared_data_dir):
  """A relative --workdir, made absolute; train.deterministic's flag reaches XLA_FLAGS."""
  proc, workdir = run
  assert f"results: {workdir}/result.json" in proc.stdout
  config = json.loads((workdir / "config.json").read_text())
  result = json.loads((workdir / "result.json").read_text())
  recorded = config["_provenance"]
  assert result["provenance"] == recorded  # one attempt: the same record
  assert recorded["versions"]["jax"] == importlib.metadata.version("jax")
  assert recorded["versions"]["orbax-checkpoint"] == importlib.metadata.version("orbax-checkpoint")
  assert (recorded["platform"], recorded["device_count"], recorded["process_count"]) == ("cpu", 1, 1)
  assert recorded["xla_flags"].split() == list(provenance.DETERMINISTIC_FLAGS)
  head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                        cwd=ROOT).stdout.strip()
  assert recorded["git"]["commit"] == head == result["git_commit"]
  assert isinstance(recorded["git"]["dirty"], bool)
  from attention_jax import data  # pylint: disable=g-import-not-at-top
  dataset = data.registry.get_dataset("algorithmic/copy", data_dir=shared_data_dir)
  assert recorded["data"] == {"name": dataset.name,
                              "records_sha256": provenance.data_hash(dataset)}


def _events(directory):
  """Every Event in the tfevents files under `directory` (TFRecord framing: length, crc,
  payload, crc)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for name in sorted(os.listdir(directory)):
    data = (directory / name).read_bytes()
    while data:
      length = int.from_bytes(data[:8], "little")
      events.append(event_pb2.Event.FromString(data[12:12 + length]))
      data = data[16 + length:]
  return events


def test_a_run_writes_tensorboard_hparams(run):
  from tensorboardX.proto import plugin_hparams_pb2  # pylint: disable=g-import-not-at-top
  workdir = run[1]
  values = {v.tag: v for e in _events(workdir / "tensorboard" / "hparams") for v in e.summary.value}
  start = plugin_hparams_pb2.HParamsPluginData.FromString(
      values["_hparams_/session_start_info"].metadata.plugin_data.content).session_start_info
  assert start.hparams["model.hidden_dim"].number_value == 24
  assert start.hparams["model.attention"].string_value == "luong"
  assert start.hparams["data.name"].string_value == "algorithmic/copy"
  result = json.loads((workdir / "result.json").read_text())
  assert values["hparams/best_loss"].simple_value == np.float32(result["best"]["loss"])
  assert (values["hparams/final_sequence_accuracy"].simple_value
          == np.float32(result["final"]["sequence_accuracy"]))
