"""What the command-line tools share: argument errors on one line, ``--version``, integer arguments."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn

import hodor

EXIT_USER_ERROR = 2


class CommandLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (``PROG: error: ...``) and exit status 2,
    like every other mistake a user can make; the usage stays behind ``--help``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--version", action="version", version=f"%(prog)s {hodor.__version__}", help="print the version"
        )

    def error(self, message: str) -> NoReturn:
        message = " ".join(message.split())
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def one_line(message: object) -> str:
    """``message`` with its whitespace (newlines included) collapsed, for a one-line error."""
    return " ".join(str(message).split())


def print_error(prog: str, message: object) -> None:
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)


def at_least(lowest: int) -> Callable[[str], int]:
    """An argparse ``type`` for an integer of ``lowest`` or more, with a one-line error otherwise."""
    what = "a positive integer" if lowest == 1 else f"an integer >= {lowest}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value

    return parse


positive_int = at_least(1)
non_negative_int = at_least(0)
