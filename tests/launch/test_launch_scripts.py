"""The cluster paths: SLURM through submitit (its local executor), and the commands that
launch/slurm_gpu.sbatch and launch/tpu_vm.sh print are the ones launch/README.md shows."""
import json
import os
import re
import shlex
import subprocess
import sys

import submitit

from launch import slurm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = open(os.path.join(ROOT, "launch", "README.md")).read()


def _documented(marker: str) -> str:
  """The code block after `<!-- marker -->` in launch/README.md."""
  return re.search(rf"<!-- {marker} -->\n```\n(.*?)```", README, re.S).group(1)


def _dry_run(line: str) -> str:
  """Runs a `DRY_RUN=1 ...` line exactly as README.md writes it."""
  env = dict(os.environ, TMPDIR="/tmp")
  return subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True,
                        check=True).stdout


def test_sbatch_dry_run_prints_what_the_readme_says():
  line = re.search(r"`(DRY_RUN=1 bash launch/slurm_gpu.sbatch [^`]*)`", README).group(1)
  assert _dry_run(line) == _documented("slurm dry run")


def test_tpu_vm_dry_run_prints_what_the_readme_says():
  line = re.search(r"\n(DRY_RUN=1 launch/tpu_vm.sh [^\n]*)\n", README).group(1)
  out = _dry_run(line)
  assert out == _documented("tpu dry run")
  ssh = shlex.split(out.splitlines()[-1])  # the last line runs the command on every worker
  assert ssh[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu",
                     "--zone=us-central2-b", "--worker=all"]
  assert ssh[8].endswith("ATTENTION_JAX_DISTRIBUTED=1 python -m attention_jax.main "
                         "--config=experiments/g2p_transformer.py --workdir=/mnt/shared/g2p_tf")


def test_tpu_vm_refuses_a_bad_command_line():
  proc = subprocess.run(["bash", "launch/tpu_vm.sh", "my-tpu", "python"], cwd=ROOT,
                        capture_output=True, text=True)
  assert proc.returncode == 2 and "usage:" in proc.stderr


def test_slurm_parameters_make_the_expected_sbatch_script(tmp_path, monkeypatch):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "srun").write_text("#!/bin/sh\n")
  (fake / "srun").chmod(0o755)
  monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")  # submitit looks for srun
  executor = submitit.AutoExecutor(folder=str(tmp_path / "submitit"), cluster="slurm")
  executor.update_parameters(**slurm.parameters("gpu", 4, 240, 8, 2, name="tf"))
  # submitit's own sbatch text (a private helper: the one place the script is visible).
  script = executor._executor._make_submission_file_text("CMD", "0")  # pylint: disable=protected-access
  for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=2", "--partition=gpu",
               "--time=240", "--cpus-per-task=8", "--job-name=tf"):
    assert f"#SBATCH {line}\n" in script
  cpu_only = slurm.parameters(None, 0, 60, 2, 1, name="cpu")
  assert cpu_only["tasks_per_node"] == 1 and "gpus_per_node" not in cpu_only
  assert "slurm_partition" not in cpu_only


def test_slurm_backend_runs_a_trial_through_submitit(tmp_path, shared_data_dir):
  root = tmp_path / "sweep"
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=shared_data_dir, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "launch.sweep", "--config=tests/launch/sweep_experiment.py",
       "--sweep=single", f"--root={root}", "--backend=slurm", "--cluster=local", "--wait"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  name = "attention=luong,score=general"
  record = json.loads((root / "sweep.json").read_text())["trials"][name]
  assert record["status"] == "done" and record["job_id"]
  assert f"submit {name}: job {record['job_id']}" in proc.stdout
  assert json.loads((root / name / "result.json").read_text())["step"] == 6
  assert "step 6/6" in (root / name / "log.txt").read_text()
  assert (root / "submitit").is_dir()


def test_print_backend_writes_the_local_commands_and_runs_nothing(tmp_path, capsys, monkeypatch):
  from launch import local, sweep, trials  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(local, "available_cores", lambda: [0, 1, 2, 3])
  spec = "tests/launch/sweep_experiment.py:steps=8"
  assert sweep.main([f"--config={spec}", f"--root={tmp_path}/s", "--backend=print",
                     "--max-parallel=2"]) == 0
  lines = capsys.readouterr().out.splitlines()
  expected = trials.expand(spec)
  assert len(lines) == len(expected) and not os.path.exists(tmp_path / "s")
  for i, (line, trial) in enumerate(zip(lines, expected)):
    workdir = f"{tmp_path}/s/{trial.name}"
    cores = "0,1" if i % 2 == 0 else "2,3"
    assert line == (f"mkdir -p {shlex.quote(workdir)} && OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "
                    f"OPENBLAS_NUM_THREADS=2 taskset -c {cores} "
                    f"{shlex.join(trial.command(spec, workdir))} >> {shlex.quote(workdir)}/log.txt "
                    "2>&1")
