"""One argparse help format for every command: descriptions as written, defaults shown,
byte sizes read and printed as people write them (``64MiB``)."""

from __future__ import annotations

import argparse
import os
import re

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000 ** 2,
          "mb": 1000 ** 2, "mib": 1 << 20, "g": 1000 ** 3, "gb": 1000 ** 3, "gib": 1 << 30,
          "t": 1000 ** 4, "tb": 1000 ** 4, "tib": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_bytes(text: str) -> int:
    """An argparse type: '4GiB', '512MB', '1.5GiB' or a plain count of bytes → bytes (> 0)."""
    match = _SIZE.fullmatch(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if not unit:
        raise argparse.ArgumentTypeError(
            f"expected a size such as 512MiB, 4GiB or a number of bytes, got {text!r}")
    value = int(float(match.group(1)) * unit)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 byte, got {text}")
    return value


def format_bytes(count: int) -> str:
    """4294967296 → '4GiB', 1610612736 → '1.5GiB', 1000 → '1000B' (what parse_bytes reads)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.0f}{unit}" if value == int(value) else f"{value:.1f}{unit}"
    return f"{count}B"


def memory_bytes() -> int | None:
    """This machine's memory, or its container's limit (cgroup v2 or v1) when lower; None
    where neither can be read."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = None
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as limit:
                text = limit.read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(int(text), total or int(text))
    return total


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to each option's help, except where there is no default
    (None), for plain flags (False) and where the help already says it; byte sizes (options
    whose type is :func:`parse_bytes`) print as ``4GiB``."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "%(default)" in text or "default:" in text
                or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS):
            return text
        default = action.default
        if action.type is parse_bytes and isinstance(default, int):
            default = format_bytes(default)
        elif isinstance(default, list | tuple):
            default = ",".join(str(v) for v in default) or "none"
        return f"{text} (default: {str(default).replace('%', '%%')})"
