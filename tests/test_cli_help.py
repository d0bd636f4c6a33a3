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


@pytest.mark.parametrize("option, value, says", [
    ("--max-in-flight", "0", "must be at least 1"),  # a stream would wait forever
    ("--max-frames-in-flight", "0", "must be at least 1"),
    ("--models-poll", "0", "must be above 0"),  # a busy loop re-reading every manifest
    ("--grace", "-1", "must be at least 0"),
    ("--max-frame-seconds", "nan", "must be at least 0"),
    ("--workers", "0", "must be at least 1"),
    ("--max-stream-age", "0", "must be above 0"),
    ("--max-connection-age", "inf", "must be above 0"),  # int(inf * 1000) at start
    ("--port", "-5", "must be at least 0"),
    ("--max-pixels", "many", "expected an integer"),
])
def test_serve_refuses_values_that_would_hang_or_spin_it(option, value, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        serve_parser().parse_args(["--bundle", "b", option, value])
    assert exit_.value.code == 2
    assert f"argument {option}: {says}" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_refuses_a_port_file_it_could_not_write_before_starting(workers, tmp_path,
                                                                       capsys):
    """Before: the models loaded (and, with --workers, the workers started and were left
    serving) before the port file's folder was found missing."""
    from anogan_inspect.server.cli import main

    port_file = tmp_path / "missing" / "port"
    assert main(["--bundle", str(tmp_path / "no-bundle"), "--port-file", str(port_file),
                 "--workers", workers, "--device", "cpu"]) == 2
    assert f"--port-file {port_file}: {port_file.parent} is not a folder" in \
        capsys.readouterr().err
