"""clients/smoke.sh (grpcurl smoke test) against a running server, a server it starts itself,
and a port where nothing listens."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "clients" / "smoke.sh"


def run_smoke(venv_bin: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', '')}"
    env["SMOKE_CONNECT_TIMEOUT"] = "5"
    return subprocess.run([str(SMOKE), *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_smoke_script_is_executable():
    assert os.access(SMOKE, os.X_OK)


def test_smoke_against_running_server(server, venv_bin):
    result = run_smoke(venv_bin, server.target)
    assert result.returncode == 0, result.stdout
    assert "smoke: all" in result.stdout
    assert "FAIL - " not in result.stdout
    assert result.stdout.count("ok - ") == 6, result.stdout


@pytest.mark.slow
def test_smoke_starts_and_drains_a_server(tiny_bundle, venv_bin):
    result = run_smoke(venv_bin, "--start-server", str(tiny_bundle), "--device", "cpu")
    assert result.returncode == 0, result.stdout
    assert "smoke: all" in result.stdout
    assert "ok - SIGTERM drains the server and it exits 0" in result.stdout


def test_smoke_fails_when_nothing_listens(venv_bin):
    result = run_smoke(venv_bin, f"localhost:{free_port()}", timeout=60)
    assert result.returncode != 0, result.stdout
    assert "FAIL - " in result.stdout
    assert "smoke: all" not in result.stdout
