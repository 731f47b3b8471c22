"""What both command-line tools share: argument errors on one line, and ``--version``."""

from __future__ import annotations

import argparse
import sys
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
