"""Every command-line option says what it does, and its default where it has one."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from anogan_inspect.clients.demo import build_parser as demo_parser
from anogan_inspect.clients.stream_client import build_parser as client_parser
from anogan_inspect.help_format import format_bytes, memory_bytes, parse_bytes
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
            if action.type is parse_bytes:
                default = format_bytes(default)
            elif isinstance(default, list | tuple):
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
    ("--stream-window", "0", "must be at least 1"),  # a stream would wait forever
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


# Each command's --help as a user's shell runs it: the modules it imports are the command
# line's own, never torch or ONNX Runtime (seconds to import).
HELP_COMMANDS = {
    "anogan-serve": "anogan_inspect.server.cli",
    "anogan-train": "anogan_inspect.trainer.cli",
    "anogan-client": "anogan_inspect.clients.stream_client",
    "demo": "anogan_inspect.clients.demo",
}


@pytest.mark.parametrize("command", sorted(HELP_COMMANDS))
def test_help_prints_without_importing_torch(command):
    module = HELP_COMMANDS[command]
    args = ["train", "--help"] if command == "anogan-train" else ["--help"]
    code = (f"import sys\nfrom {module} import build_parser\n"
            f"build_parser().print_help() if {args!r} == ['--help'] else None\n"
            f"try:\n    build_parser().parse_args({args!r})\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in ('torch', 'onnxruntime') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "IMPORTED []" in done.stdout, done.stdout[-300:]
    assert "usage:" in done.stdout


def test_serve_help_is_in_groups_with_byte_sizes_people_read():
    text = serve_parser().format_help()
    groups = [line[:-1] for line in text.splitlines() if line and not line.startswith(" ")
              and line.endswith(":")]
    for group in ("models", "listening", "security", "limits", "search",
                  "device and tuning", "GPU", "shutdown", "metrics"):
        assert group in groups, groups
    flat = " ".join(text.split())
    assert "largest gRPC message received or sent (default: 64MiB)" in flat
    share = format_bytes(max(1 << 30, memory_bytes() // 16))
    assert f"1/16 of this machine's memory, at least 1GiB: {share} here)" in flat


@pytest.mark.parametrize("text, count", [("4GiB", 4 << 30), ("512MB", 512_000_000),
                                         ("1.5GiB", 3 << 29), ("64 mib", 64 << 20),
                                         ("1000", 1000), ("2k", 2000)])
def test_byte_sizes_read_as_written(text, count):
    assert parse_bytes(text) == count
    assert parse_bytes(format_bytes(count)) == pytest.approx(count, rel=0.05)  # as printed


@pytest.mark.parametrize("text", ["", "GiB", "4 GB B", "-1", "0", "4XB", "1e9"])
def test_byte_sizes_that_are_not_say_so(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_bytes(text)


def test_bytes_in_flight_default_to_a_share_of_this_machines_memory():
    from anogan_inspect.server.cli import config_from_args

    limits = config_from_args(serve_parser().parse_args(["--bundle", "b"])).limits
    assert limits.max_bytes_in_flight == max(1 << 30, memory_bytes() // 16)
    assert limits.max_bytes_in_flight < memory_bytes()
    chosen = serve_parser().parse_args(["--bundle", "b", "--max-bytes-in-flight", "300MiB"])
    assert config_from_args(chosen).limits.max_bytes_in_flight == 300 << 20


def test_metrics_listen_where_the_server_does_unless_told():
    from anogan_inspect.server.cli import config_from_args

    def address(*args: str) -> str:
        return config_from_args(serve_parser().parse_args(["--bundle", "b", *args])
                                ).metrics_address

    assert address("--metrics-port", "9100") == "[::]"  # --host's default
    assert address("--host", "127.0.0.1", "--metrics-port", "9100") == "127.0.0.1"
    assert address("--host", "127.0.0.1", "--metrics-host", "10.0.0.5") == "10.0.0.5"
