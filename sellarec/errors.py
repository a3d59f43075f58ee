"""Error types that the command line turns into a one-line message and exit code 2.

Anything raised that is not a `SellarecError` is a bug: it keeps its traceback and exits 1.
"""

from __future__ import annotations

__all__ = ["SellarecError", "ConfigError", "DataError", "ResourceError", "SellarecWarning"]


class SellarecError(Exception):
    """Bad input from the user: one line saying what is wrong, where, and how to fix it."""


class ConfigError(SellarecError):
    """An unknown key, a wrong type or an impossible value in a configuration, preset or option."""


class DataError(SellarecError):
    """A missing data file, wrong columns or data the protocol cannot split."""


class ResourceError(SellarecError):
    """Resources that cannot be had on this machine (a GPU where there is none, ...)."""


class SellarecWarning(UserWarning):
    """A legal but suspicious setting."""
