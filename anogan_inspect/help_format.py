"""One argparse help format for every command: descriptions as written, defaults shown."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to each option's help, except where there is no default
    (None), for plain flags (False) and where the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "%(default)" in text or "default:" in text
                or action.default is None or action.default is False
                or action.default == argparse.SUPPRESS):
            return text
        default = action.default
        if isinstance(default, list | tuple):
            default = ",".join(str(v) for v in default) or "none"
        return f"{text} (default: {str(default).replace('%', '%%')})"
