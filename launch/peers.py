"""The peer G2P systems of `launch.baselines`: Phonetisaurus and Sequitur G2P.

Both are PyPI packages of the `peers` extra, run as subprocesses on files in the run's
workdir. `train(pairs)` trains on (word, pronunciation) pairs and returns the model order
it reached; `predict(words, split)` returns word -> pronunciation for the words the tool
gave one for. Every tool call's output goes to a log file beside the model; each training
stage's CPU and wall seconds are kept in `times.json`, so a rerun that reuses a finished
stage still counts its time.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import resource
import subprocess
import sys
import sysconfig
import time

from attention_jax.data import paths

INSTALL_HINT = "pip install -e '.[peers]'"
TIMES_FILE = "times.json"


class ToolError(Exception):
  """A peer tool is missing or failed; the message is one line."""


def _children_cpu_s() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def timed(command: list[str], log_path: str, stdin=None, stdout=None, timeout=None,
          env=None) -> dict:
  """Runs `command`, its output (or stderr only, with `stdout`) to `log_path`.

  Returns {'cpu_s', 'wall_s', 'exit', 'timed_out'}; cpu_s counts the command and every
  process it waited for.
  """
  cpu, start = _children_cpu_s(), time.perf_counter()
  timed_out, code = False, None
  with open(log_path, "w") as log:
    try:
      code = subprocess.run(command, stdin=stdin, stdout=stdout or log, stderr=log,
                            timeout=timeout, env=env, check=False).returncode
    except subprocess.TimeoutExpired:  # run() killed and reaped it
      timed_out = True
  return {"cpu_s": round(_children_cpu_s() - cpu, 2),
          "wall_s": round(time.perf_counter() - start, 2), "exit": code, "timed_out": timed_out}


def read_pairs(path: str) -> dict[str, str]:
  """A tool's output `word<TAB>phonemes` per line -> word -> phonemes (the first if repeated)."""
  out: dict[str, str] = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      word, _, pron = line.rstrip("\n").partition("\t")
      if word:
        out.setdefault(word, " ".join(pron.split()))
  return out


class Peer:
  """What both systems share: the workdir, the installed check, stage times, file writing."""

  name = ""
  package = ""  # the importable module that shows the tool is installed
  distribution = ""  # its PyPI name (version)

  def __init__(self, workdir: str, say=print):
    self.workdir = workdir
    self.say = say

  def check(self) -> None:
    if importlib.util.find_spec(self.package) is None:
      raise ToolError(f"{self.name} is not installed: run `{INSTALL_HINT}`")

  def version(self) -> str:
    return importlib.metadata.version(self.distribution)

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def times(self) -> dict[str, dict]:
    """stage -> {'cpu_s', 'wall_s'} of every finished training stage, earlier runs' too."""
    if not os.path.exists(self.path(TIMES_FILE)):
      return {}
    with open(self.path(TIMES_FILE)) as f:
      return json.load(f)

  def record(self, stage: str, took: dict) -> None:
    times = {**self.times(), stage: {"cpu_s": took["cpu_s"], "wall_s": took["wall_s"]}}
    paths.atomic_write_bytes(self.path(TIMES_FILE), json.dumps(times, indent=1).encode())

  def write_lines(self, name: str, lines) -> str:
    path = self.path(name)
    with open(path, "w", encoding="utf-8") as f:
      f.writelines(f"{line}\n" for line in lines)
    return path

  def train_time(self, order: int) -> dict[str, float]:
    """{'cpu_s', 'wall_s'} of training up to `order`, summed over its stages."""
    times = self.times()
    stages = [times[s] for s in self.stages(order) if s in times]
    return {k: round(sum(t[k] for t in stages), 2) for k in ("cpu_s", "wall_s")}

  def stages(self, order: int) -> list[str]:
    raise NotImplementedError

  def failed(self, what: str, took: dict, log: str) -> ToolError:
    return ToolError(f"{self.name} {what} failed (exit {took['exit']}); see {log}")


class Phonetisaurus(Peer):
  """Phonetisaurus' joint-sequence n-gram WFST with its `phonetisaurus train` defaults
  (8-gram, alignments of up to 2 letters to 2 phonemes)."""

  name = package = distribution = "phonetisaurus"
  ORDER = 8  # phonetisaurus-train's default n-gram order, which `phonetisaurus train` keeps

  def stages(self, order: int) -> list[str]:
    return ["train"]

  def train(self, pairs, max_order=None, budget_s=None) -> int:
    del max_order, budget_s  # one fixed-order model, trained in minutes
    model = self.path("model.fst")
    if os.path.exists(model) and "train" in self.times():
      self.say(f"{self.name}: reusing {model}")
      return self.ORDER
    lexicon = self.write_lines("train.lex", (f"{w}\t{p}" for w, p in pairs))
    self.say(f"{self.name}: training an {self.ORDER}-gram model on {len(pairs):,} "
             "pronunciations ...")
    log = self.path("train.log")
    took = timed([sys.executable, "-m", "phonetisaurus", "train", "--model", model + ".partial",
                  lexicon], log)
    if took["exit"] != 0 or not os.path.exists(model + ".partial"):
      raise self.failed("train", took, log)
    self.record("train", took)
    os.replace(model + ".partial", model)
    self.say(f"{self.name}: trained in {took['wall_s']:.0f} s (CPU {took['cpu_s']:.0f} s)")
    return self.ORDER

  def predict(self, words, split: str, order: int) -> dict[str, str]:
    del order  # one model
    listed = self.write_lines(f"{split}.words", words)
    out, log = self.path(f"{split}.out"), self.path(f"predict_{split}.log")
    with open(listed) as stdin, open(out, "w") as stdout:
      took = timed([sys.executable, "-m", "phonetisaurus", "predict", "--model",
                    self.path("model.fst"), "--word-separator", "\t"], log, stdin, stdout)
    if took["exit"] != 0:
      raise self.failed(f"predict {split}", took, log)
    return read_pairs(out)


class Sequitur(Peer):
  """Sequitur G2P's joint-sequence model (Bisani & Ney 2008), ramped up one order at a time:
  order 1 from scratch, each next one from the last (`--ramp-up`), 5% of train held out
  for its discounts. Order k's model is `model-k`: a rerun resumes after the last one."""

  name, package, distribution = "sequitur", "sequitur", "sequitur-g2p"

  def check(self) -> None:
    super().check()
    if not os.path.exists(os.path.join(sysconfig.get_path("scripts"), "g2p.py")):
      raise ToolError(f"sequitur's g2p.py is not in {sysconfig.get_path('scripts')}: run "
                      f"`{INSTALL_HINT}`")

  def command(self, *args: str) -> list[str]:
    return [sys.executable, "-m", "launch.sequitur_g2p", "--encoding=UTF-8", *args]

  def stages(self, order: int) -> list[str]:
    return [f"order {k}" for k in range(1, order + 1)]

  def finished(self, max_order: int) -> int:
    """The highest order k <= max_order whose models 1..k all exist (0 for none)."""
    order = 0
    while order < max_order and os.path.exists(self.path(f"model-{order + 1}")):
      order += 1
    return order

  def train(self, pairs, max_order=6, budget_s=None) -> int:
    lexicon = self.write_lines("train.lex", (f"{w} {p}" for w, p in pairs))
    done = self.finished(max_order)
    if done:
      self.say(f"{self.name}: trained up to order {done} already; reusing model-{done}")
    spent = self.train_time(done)["wall_s"]
    for order in range(done + 1, max_order + 1):
      left = None if budget_s is None else budget_s - spent
      if left is not None and left <= 0:
        self.say(f"{self.name}: the budget is spent ({spent / 3600:.2f} h); stopping at "
                 f"order {order - 1}")
        break
      took = self.train_order(order, lexicon, left)
      if took is None:
        break
      spent += took["wall_s"]
      done = order
    if done == 0:
      raise ToolError(f"{self.name}: no order finished within the budget; raise --budget-hours")
    return done

  def train_order(self, order: int, lexicon: str, left_s) -> dict | None:
    """Trains order `order` from order-1's model; None when the budget ran out first."""
    model, log = self.path(f"model-{order}"), self.path(f"train_order{order}.log")
    start = ["--model", self.path(f"model-{order - 1}"), "--ramp-up"] if order > 1 else []
    self.say(f"{self.name}: training order {order} on {lexicon} ...")
    took = timed(self.command(*start, "--train", lexicon, "--devel", "5%", "--write-model",
                              model + ".partial"), log, timeout=left_s,
                 env={**os.environ, "PYTHONHASHSEED": "0"})
    if took["timed_out"]:
      self.say(f"{self.name}: order {order} stopped at the budget after {took['wall_s']:.0f} s; "
               f"using order {order - 1}")
      return None
    if took["exit"] != 0 or not os.path.exists(model + ".partial"):
      raise self.failed(f"training order {order}", took, log)
    self.record(f"order {order}", took)
    os.replace(model + ".partial", model)
    self.say(f"{self.name}: order {order} trained in {took['wall_s']:.0f} s "
             f"(CPU {took['cpu_s']:.0f} s)")
    return took

  def predict(self, words, split: str, order: int) -> dict[str, str]:
    listed = self.write_lines(f"{split}.words", words)
    out, log = self.path(f"{split}.out"), self.path(f"predict_{split}.log")
    with open(out, "w") as stdout:
      took = timed(self.command("--model", self.path(f"model-{order}"), "--apply", listed),
                   log, stdout=stdout, env={**os.environ, "PYTHONHASHSEED": "0"})
    if took["exit"] != 0:
      raise self.failed(f"predict {split}", took, log)
    return read_pairs(out)


SYSTEMS = {"phonetisaurus": Phonetisaurus, "sequitur": Sequitur}
