"""Every command-line option says what it does, and its default where it has one."""

from __future__ import annotations

import argparse

import pytest

from anogan_inspect.clients.demo import build_parser as demo_parser
from anogan_inspect.clients.stream_client import build_parser as client_parser
from anogan_inspect.server.cli import build_parser as serve_parser
from anogan_inspect.trainer.cli import build_parser as train_parser


def parsers() -> dict[str, argparse.ArgumentParser]:
    train = train_parser()
    commands = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    return {"anogan-serve": serve_parser(), "anogan-client": client_parser(),
            "demo": demo_parser(),
            **{f"anogan-train {name}": sub for name, sub in commands.choices.items()}}


def option_help(text: str, option: str) -> str:
    """The help printed for one option: from its line to the next option's."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines)  # an option's own line starts with "  -"
                 if line.startswith("  -") and option in line.replace(",", " ").split())
    end = next((i for i in range(start + 1, len(lines))  # the next option, or a blank line
                if lines[i].startswith("  -") or not lines[i].strip()), len(lines))
    return " ".join(line.strip() for line in lines[start:end])


@pytest.mark.parametrize("command", sorted(parsers()))
def test_every_option_has_help_and_its_default(command):
    parser = parsers()[command]
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        option = action.option_strings[-1]
        assert action.help, f"{command} {option} has no help text"
        shown = option_help(text, option)
        assert len(shown) > len(option) + 5, f"{command} {option}: no help printed"
        if action.default is not None and action.default is not False:
            default = action.default
            if isinstance(default, list | tuple):
                default = ",".join(str(v) for v in default) or "none"
            assert f"(default: {default}" in shown or "default:" in action.help, \
                f"{command} {option}: its default {default!r} is not shown: {shown!r}"


def test_defaults_come_from_the_configs():
    text = " ".join(serve_parser().format_help().split())
    assert "measured at load (default: auto)" in text  # --max-batch
    assert "precision" in text and "(default: fp32)" in text
    assert "(default: 30.0)" in text  # --grace
    train = " ".join(parsers()["anogan-train train"].format_help().split())
    assert "GAN epochs (default: the preset's; default 150, seed 30, tiny 2)" in train
    assert "held out for calibration (default: 0.15)" in train
