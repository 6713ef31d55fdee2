"""Exception types shared by the whole project.

Every error about user input names the offending file (and, for configuration,
the offending key) so that a user can act on the message without reading code.
"""

from __future__ import annotations

from os import PathLike

__all__ = ["ConfigError", "InputError", "MsmriError"]


class MsmriError(Exception):
    """Base class of all errors raised deliberately by msmri."""


class InputError(MsmriError, ValueError):
    """An input file is missing, unreadable or scientifically invalid.

    Parameters
    ----------
    path : path-like or None
        The offending file; always shown first in the message.
    problem : str
        What is wrong, phrased as "expected ..., got ..." where possible.
    """

    def __init__(self, path: str | PathLike[str] | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        prefix = f"{self.path}: " if self.path else ""
        super().__init__(prefix + problem)


class ConfigError(MsmriError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range.

    Parameters
    ----------
    key : str
        Dotted key of the offending entry, e.g. ``"dwi.tensor_method"``.
    source : str
        The YAML file the value came from (the defaults or a user override).
    problem : str
        What is wrong with it.
    """

    def __init__(self, key: str, source: str, problem: str):
        self.key = key
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: configuration key '{key}': {problem}")
