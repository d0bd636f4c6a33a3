"""Every command-line option says what it does, and its default where it has one."""

from __future__ import annotations

import argparse

import pytest

from anogan_inspect.clients.stream_client import build_parser as client_parser
from anogan_inspect.server.cli import build_parser as serve_parser
from anogan_inspect.trainer.cli import build_parser as train_parser


def parsers() -> dict[str, argparse.ArgumentParser]:
    train = train_parser()
    commands = next(a for a in train._actions if isinstance(a, argparse._SubParsersAction))
    return {"anogan-serve": serve_parser(), "anogan-client": client_parser(),
            **{f"anogan-train {name}": sub for name, sub in commands.choices.items()}}


@pytest.mark.parametrize("command", sorted(parsers()))
def test_every_option_has_help_and_its_default(command):
    parser = parsers()[command]
    text = parser.format_help()
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help text"
        has_default = action.default is not None and action.default is not False
        if has_default:
            formatted = parser._get_formatter()._get_help_string(action)
            assert "default:" in formatted, f"{command} {action.option_strings[0]}"
    assert "(default: " in text


def test_defaults_come_from_the_configs():
    text = " ".join(serve_parser().format_help().split())
    assert "search engine slots: searches batched in one step (default: 64)" in text
    assert "(default: 30.0)" in text  # --grace
    train = " ".join(parsers()["anogan-train train"].format_help().split())
    assert "GAN epochs (default: the preset's; default 150, seed 30, tiny 2)" in train
    assert "held out for calibration (default: 0.15)" in train
