"""The two ways the data layer complains: `DataError` (refuse) and `DataWarning` (fixed, counted).

A dataset is never fixed silently and never fails with a bare traceback from deep inside a
parser. Either a problem can be repaired without guessing (a box that sticks out of the image is
clipped), and then it is counted and summarised in one `DataWarning`, or it cannot (a file that
does not parse, a class name nobody declared), and then a `DataError` says which file, and where
in it, so that a person can go and look.
"""
from __future__ import annotations

import os


class DataError(ValueError):
    """A dataset file that cannot be used. The message always starts with the file's path.

    `path` is the offending file; `where` narrows it down ("line 3, column 7", "object 2").
    """

    def __init__(self, path: str | os.PathLike, problem: str, where: str | None = None) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.where = where
        location = f"{self.path} ({where})" if where else self.path
        super().__init__(f"{location}: {problem}")

    def __reduce__(self):
        # Exceptions are pickled by their args; ours has a different signature, so say how
        # (DataLoader worker processes send exceptions back to the main process this way).
        return (type(self), (self.path, self.problem, self.where))


class DataWarning(UserWarning):
    """Something in a dataset was repaired (and counted in `dataset.report`) rather than refused."""
