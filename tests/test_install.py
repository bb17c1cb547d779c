"""The install is reproducible: constraints.txt pins every dependency inside pyproject.toml's
ranges, and the environment the suite runs in is the pinned one."""
import importlib.metadata
import os
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pins() -> dict[str, str]:
  pins = {}
  with open(os.path.join(ROOT, "constraints.txt")) as f:
    for line in f:
      line = line.split("#")[0].strip()
      if line:
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not name==version"
        pins[canonicalize_name(name)] = version
  return pins


def _requirements() -> list[Requirement]:
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    project = tomllib.load(f)["project"]
  return [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]


def test_every_dependency_is_pinned_inside_its_range():
  pins = _pins()
  for req in _requirements():
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is not pinned in constraints.txt"
    assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_the_suite_runs_on_the_pinned_versions():
  wrong = {}
  for name, version in _pins().items():
    try:
      installed = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      installed = None
    if installed != version:
      wrong[name] = (installed, version)
  assert not wrong, f"installed != pinned (run `make test`, which installs the pins): {wrong}"
