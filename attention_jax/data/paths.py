"""Where prepared data sets live.

Order of precedence for the data dir (the root that holds `<name>/<config>/<version>/`):
  1. an explicit `data_dir` argument (the trainer passes `config.data.data_dir`);
  2. the environment variable `ATTENTION_JAX_DATA_DIR`;
  3. the environment variable `TFDS_DATA_DIR` (TFDS's own override);
  4. `~/tensorflow_datasets`.
"""
import os

DATA_DIR_ENV = "ATTENTION_JAX_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> str:
  """Returns the data dir to use, as an absolute path with `~` expanded."""
  for candidate in (data_dir, os.environ.get(DATA_DIR_ENV), os.environ.get("TFDS_DATA_DIR")):
    if candidate:
      return os.path.abspath(os.path.expanduser(os.fspath(candidate)))
  return os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file and a rename.

  A reader (or a second process writing the same file) never sees a half-written file.
  """
  path = os.fspath(path)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp.{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
