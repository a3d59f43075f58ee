"""How every command line of the project fails: one line on stderr and exit code 2 (``sellarec``, ``tune/``,
``ablations/``); anything that is not a :class:`~sellarec.errors.SellarecError` is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

from sellarec.errors import SellarecError

__all__ = ["ArgumentParser", "exit_code"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``prog: error: message (see --help)`` on one line and exit with code 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def exit_code(command: Callable[[], int]) -> int:
    """Run ``command`` and return its exit code; a ``SellarecError`` becomes ``Name: message`` on stderr and 2."""
    try:
        return int(command())
    except SellarecError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
