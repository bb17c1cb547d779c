"""Errors raised by the data package: each names what is wrong and how to fix it."""


def first_line(error: BaseException) -> str:
  """`error` as one short line (the CLI prints one line; C++ readers' messages span several)."""
  lines = str(error).strip().splitlines()
  return f"{type(error).__name__}: {lines[0]}"[:300] if lines else type(error).__name__


class DataError(Exception):
  """Base class for data set problems (unknown names, missing inputs, bad files)."""


class MissingDataError(DataError, FileNotFoundError):
  """A package, raw file or prepared data set that is needed is not there."""


class DataFormatError(DataError, ValueError):
  """A raw input file has a malformed line; the message gives file and line."""

  def __init__(self, path, line_number: int, message: str):
    self.path = str(path)
    self.line_number = line_number
    super().__init__(f"{self.path}:{line_number}: {message}")


class DamagedDataError(DataError):
  """A prepared data set's file is missing, empty, truncated or unreadable.

  The message names the file and the command that rebuilds the data set.
  """


def damaged(path, error: BaseException, fix: str) -> DamagedDataError:
  """The error for a file that failed to read: `<path> is damaged (<error>); <fix>`."""
  return DamagedDataError(f"{path} is damaged ({first_line(error)}); {fix}")
