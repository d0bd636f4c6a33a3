"""What users install: one import namespace, a client that needs no torch.

The wheel is built from this checkout and installed, base dependencies only (the client's
role), into a new virtual environment next to another distribution that ships a top-level
`server` package; its client then streams to the test server.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, TEST_CSV

HEAVY = ("torch", "onnxruntime", "onnx", "sklearn", "matplotlib", "grpc_tools")


def run(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(args, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def test_the_client_imports_no_torch_while_it_streams(server):
    """The client in a process where importing torch (or any serving or training
    dependency) fails: it streams, summarises, and none of them was imported."""
    script = (
        "import sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # any import of it raises ImportError\n"
        "from anogan_inspect.clients.stream_client import main\n"
        f"code = main(['--target', {server.target!r}, '--csv', {str(TEST_CSV)!r},\n"
        "             '--normal-labels', '7,8', '--anomaly-labels', '2', '--limit', '30',\n"
        "             '--mode', 'fast', '--quiet'])\n"
        f"loaded = [n for n in {HEAVY!r} if sys.modules.get(n) is not None]\n"
        "print('heavy modules loaded:', loaded)\n"
        "sys.exit(code)\n")
    done = run(sys.executable, "-c", script, cwd=ROOT)
    assert "frames 30  errors 0" in done.stdout
    assert "AUROC" in done.stdout
    assert "heavy modules loaded: []" in done.stdout


def fake_wheel(directory: Path) -> Path:
    """A wheel of another distribution, `other-server`, whose top-level package is `server`."""
    files = {"server/__init__.py": b'OWNER = "other-server"\n',
             "other_server-1.0.dist-info/METADATA":
                 b"Metadata-Version: 2.1\nName: other-server\nVersion: 1.0\n",
             "other_server-1.0.dist-info/WHEEL":
                 b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = [f"{name},sha256={_digest(data)},{len(data)}" for name, data in files.items()]
    record.append("other_server-1.0.dist-info/RECORD,,")
    files["other_server-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    path = directory / "other_server-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
    return path


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


@pytest.mark.slow
def test_wheel_installs_one_namespace_and_a_client_without_torch(server, tmp_path):
    # From a copy of what git has (tracked, and new files it does not ignore): an in-place
    # build would reuse build/lib and could ship modules that no longer exist.
    source = tmp_path / "source"
    listed = run("git", "ls-files", "-co", "--exclude-standard", "-z", cwd=ROOT).stdout
    for name in filter(None, listed.split("\0")):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(tmp_path / "dist"),
                str(source))
    assert "project.license" not in built.stdout + built.stderr  # no deprecation box
    wheel = next((tmp_path / "dist").glob("anogan_inspect-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    metadata = {name for name in top_level if name.endswith(".dist-info")}
    assert len(metadata) == 1 and top_level - metadata == {"anogan", "anogan_inspect"}
    assert "anogan/__init__.py" not in names  # a namespace: others may add anogan.* packages
    for part in ("server", "trainer", "clients"):
        assert f"anogan_inspect/{part}/__init__.py" in names
    assert not [n for n in names if n.startswith(("bench/", "tests/"))]

    environment = tmp_path / "client-env"
    venv.create(environment, with_pip=True)
    python, pip = environment / "bin" / "python", environment / "bin" / "pip"
    run(str(pip), "install", "-q", str(fake_wheel(tmp_path)))
    run(str(pip), "install", "-q", str(wheel))  # the base install: the client's role
    other = environment / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / \
        "site-packages" / "server" / "__init__.py"
    assert other.read_text() == 'OWNER = "other-server"\n'
    missing = run(str(python), "-c", "import importlib.util as u; print("
                  f"[n for n in {HEAVY!r} if u.find_spec(n) is not None])")
    assert missing.stdout.strip() == "[]"  # none of them installed

    client = run(str(environment / "bin" / "anogan-client"), "--target", server.target,
                 "--csv", str(TEST_CSV), "--normal-labels", "7,8", "--anomaly-labels", "2",
                 "--limit", "30", "--mode", "fast", "--quiet", cwd=tmp_path)
    assert "frames 30  errors 0" in client.stdout and "AUROC" in client.stdout
    module = run(str(python), "-m", "anogan_inspect.clients", "--help", cwd=tmp_path)
    assert module.stdout.startswith("usage: anogan-client")

    run(str(pip), "uninstall", "-q", "-y", "anogan-inspect")
    assert other.read_text() == 'OWNER = "other-server"\n'  # left alone
