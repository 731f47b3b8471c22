"""Number formats shared by the text table and the markdown tables."""

from __future__ import annotations

from measurements import Stat


def num(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def spread(s: Stat | None, digits: int = 2) -> str:
    """``median [min-max]`` for the terminal."""
    if s is None or s.median is None:
        return "-"
    return f"{s.median:.{digits}f} [{s.min:.{digits}f}-{s.max:.{digits}f}]"


def md_stat(s: Stat | None, digits: int = 2) -> str:
    """``median (min-max)`` for markdown; a single run says so."""
    if s is None or s.median is None:
        return "-"
    if s.n == 1:
        return f"{s.median:.{digits}f} (1 run)"
    return f"{s.median:.{digits}f} ({s.min:.{digits}f}-{s.max:.{digits}f})"


def size(hw: list[int]) -> str:
    """``[height, width]`` as ``WxH``."""
    return f"{hw[1]}x{hw[0]}"
