"""The workdir lock: a second process is refused naming the holder; a dead holder's lock is
taken over; the trainer refuses a held workdir before writing anything."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from attention_jax.train import lock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
G2P = os.path.join(ROOT, "experiments", "g2p_attention.py")
# Holds the lock on argv[1], says so, then waits for stdin to close (or a signal).
HOLDER = ("import sys\nfrom attention_jax.train import lock\n"
          "with lock.hold(sys.argv[1]):\n  print('held', flush=True)\n  sys.stdin.read()\n")


@pytest.fixture
def holder(tmp_path):
  """A live process holding the lock on tmp_path/'run'."""
  proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "run")], cwd=ROOT,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline() == "held\n"
  yield proc
  proc.kill()
  proc.wait()


def test_second_holder_is_refused_naming_the_first(holder, tmp_path):
  workdir = str(tmp_path / "run")
  with pytest.raises(lock.LockError) as error:
    with lock.hold(workdir):
      pass
  assert str(error.value) == (
      f"workdir {workdir!r} is in use by PID {holder.pid} on {socket.gethostname()} (lock file "
      f"{workdir}/.lock); wait for it to end or stop it")


def test_lock_of_a_killed_holder_is_taken_over(holder, tmp_path):
  workdir = str(tmp_path / "run")
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert f"PID {holder.pid}" in lock.holder(workdir)  # the dead holder's record is still there
  with lock.hold(workdir):
    assert lock.holder(workdir) == f"PID {os.getpid()} on {socket.gethostname()}"
  with lock.hold(workdir):  # released on exit, so taken again
    pass


def test_trainer_refuses_a_held_workdir_and_writes_nothing(holder, tmp_path, shared_data_dir):
  workdir = tmp_path / "run"
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=shared_data_dir, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "attention_jax.main", f"--config={G2P}:smoke=True",
       f"--workdir={workdir}", "--config.data.name=algorithmic/copy",
       "--config.evals.dev.metrics=sequence_accuracy"],
      capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr  # the lines before are the data set's build
  assert proc.stderr.strip().splitlines()[-1] == (
      f"error: workdir {str(workdir)!r} is in use by PID {holder.pid} on {socket.gethostname()} "
      f"(lock file {workdir}/.lock); wait for it to end or stop it")
  assert sorted(os.listdir(workdir)) == [".lock"]


def test_unwritable_directory_is_a_lock_error(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  with pytest.raises(lock.LockError, match="is not writable"):
    with lock.hold(str(blocker / "run")):
      pass
  assert blocker.read_text() == "x"


def test_held_by_names_a_live_holder_and_writes_nothing(holder, tmp_path):
  workdir = str(tmp_path / "run")
  before = (tmp_path / "run" / ".lock").read_bytes()
  assert lock.held_by(workdir) == f"PID {holder.pid} on {socket.gethostname()}"
  assert (tmp_path / "run" / ".lock").read_bytes() == before
  holder.kill()
  holder.wait()
  assert lock.held_by(workdir) is None  # dead: its record is still there, but no lock
  assert lock.held_by(str(tmp_path / "never_locked")) is None
