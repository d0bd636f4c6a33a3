"""`make proto` for six languages, the generated Go and Java stubs compiled, and the C++ and
TypeScript sample clients built and streaming the MNIST test digits through a real server.

Each test needs its toolchain (`make proto-tools` installs them all; `.ci/run` runs it);
without it the test is skipped, naming what is missing.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.conftest import ROOT, TEST_CSV

sys.path.insert(0, str(ROOT / "proto"))
import generate  # noqa: E402  (proto/generate.py: the generators and what they need)

OTHERS = [language for language in generate.LANGUAGES if language != "python"]
GOCODE = Path("/usr/share/gocode")  # Debian's Go sources (golang-google-*-dev)
JARS = Path("/usr/share/java")  # Debian's jars (libprotobuf-java, libgrpc-java)
SUMMARY = re.compile(r"frames (\d+) answered (\d+) missing (\d+) out_of_order (\d+) "
                     r"errors (\d+) pass (\d+) fail (\d+)(?: auroc ([0-9.]+))?")


def need(*tools: str) -> None:
    missing = [tool for tool in tools if not (Path(tool).exists() or shutil.which(tool))]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (`make proto-tools` installs them)")


def run(command: list, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)


def generate_into(out: Path, *languages: str) -> subprocess.CompletedProcess:
    return run([sys.executable, ROOT / "proto" / "generate.py", "--lang",
                ",".join(languages), "--out", out])


def test_make_proto_writes_six_languages_and_the_same_bytes_twice(tmp_path):
    missing = generate.missing_tools(OTHERS)
    if missing:
        pytest.skip(f"not installed: {'; '.join(missing)}")
    for attempt in ("first", "second"):
        proc = generate_into(tmp_path / attempt, *OTHERS)
        assert proc.returncode == 0, proc.stderr
    expected = {  # messages and service stubs for each
        "cpp": ["anogan/v1/inspection.pb.h", "anogan/v1/inspection.grpc.pb.cc",
                "google/rpc/status.pb.cc", "grpc/health/v1/health.grpc.pb.h"],
        "go": ["anogan/v1/inspection.pb.go", "anogan/v1/inspection_grpc.pb.go"],
        "java": ["com/anogan/inspect/v1/Frame.java",
                 "com/anogan/inspect/v1/InspectionServiceGrpc.java"],
        "csharp": ["Inspection.cs"],
        "ts": ["anogan/v1/inspection.ts", "anogan/v1/inspection.grpc-client.ts",
               "google/rpc/status.ts", "grpc/health/v1/health.grpc-client.ts"],
    }
    for language, files in expected.items():
        for name in files:
            assert (tmp_path / "first" / language / name).is_file(), f"{language}: {name}"
    comparison = filecmp.dircmp(tmp_path / "first", tmp_path / "second")

    def differences(cmp: filecmp.dircmp) -> list[str]:
        found = cmp.left_only + cmp.right_only + cmp.diff_files + cmp.funny_files
        return found + [d for sub in cmp.subdirs.values() for d in differences(sub)]

    assert not differences(comparison)
    # filecmp's shallow check trusts equal stat signatures: compare the bytes too.
    for path in (tmp_path / "first").rglob("*"):
        if path.is_file():
            twin = tmp_path / "second" / path.relative_to(tmp_path / "first")
            assert path.read_bytes() == twin.read_bytes(), path


def test_a_missing_generator_is_named_with_how_to_install_it(tmp_path):
    env = {**os.environ, "PATH": str(Path(sys.executable).parent)}  # no protoc, no plugins
    proc = run([sys.executable, ROOT / "proto" / "generate.py", "--lang", "go", "--out",
                tmp_path], env=env)
    assert proc.returncode != 0
    assert "protoc-gen-go for go (apt-get install" in proc.stderr
    assert "make proto-tools" in proc.stderr
    assert not (tmp_path / "go").exists()


@pytest.mark.slow
def test_generated_go_stubs_compile(tmp_path):
    need("protoc", "protoc-gen-go", "protoc-gen-go-grpc", "go",
         str(GOCODE / "src/google.golang.org/grpc"), str(GOCODE / "src/google.golang.org/genproto"))
    proc = generate_into(tmp_path / "gen", "go")
    assert proc.returncode == 0, proc.stderr
    # GOPATH mode against Debian's sources: the go_package path of inspection.proto.
    package = tmp_path / "gopath/src/github.com/anogan-inspect/anogan-inspect/gen"
    package.mkdir(parents=True)
    (package / "go").symlink_to(tmp_path / "gen" / "go")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{tmp_path / 'gopath'}:{GOCODE}",
           "GOCACHE": str(tmp_path / "gocache"), "GOFLAGS": ""}
    built = run(["go", "build", "./..."], cwd=package / "go", env=env)
    assert built.returncode == 0, built.stdout + built.stderr


@pytest.mark.slow
def test_generated_java_stubs_compile(tmp_path):
    jars = [JARS / f"{name}.jar" for name in (
        "protobuf", "grpc-api", "grpc-stub", "grpc-protobuf", "grpc-protobuf-lite",
        "grpc-core", "guava", "geronimo-annotation-1.3-spec")]
    need("protoc", "grpc_java_plugin", "javac", *map(str, jars))
    proc = generate_into(tmp_path / "gen", "java")
    assert proc.returncode == 0, proc.stderr
    # google.rpc.Status comes from proto-google-common-protos in a Java project; here,
    # from the vendored proto.
    status = run(["protoc", f"-I{ROOT / 'proto'}", f"--java_out={tmp_path / 'gen' / 'java'}",
                  "google/rpc/status.proto"])
    assert status.returncode == 0, status.stderr
    sources = sorted(map(str, (tmp_path / "gen" / "java").rglob("*.java")))
    built = run(["javac", "-nowarn", "-d", tmp_path / "classes", "-cp",
                 os.pathsep.join(map(str, jars)), *sources])
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "classes/com/anogan/inspect/v1/InspectionServiceGrpc.class").is_file()


# --- the sample clients ----------------------------------------------------------------


@pytest.fixture(scope="session")
def cpp_client(tmp_path_factory) -> Path:
    need("cmake", "c++", "protoc", "grpc_cpp_plugin")
    build = tmp_path_factory.mktemp("cpp-build")
    configured = run(["cmake", "-S", ROOT / "clients" / "cpp", "-B", build])
    assert configured.returncode == 0, configured.stdout + configured.stderr
    built = run(["cmake", "--build", build, "-j", str(os.cpu_count() or 2)], timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    return build / "anogan-client-cpp"


@pytest.fixture(scope="session")
def ts_client() -> list[str]:
    folder = ROOT / "clients" / "ts"
    need("node", "npm", "protoc", str(folder / "node_modules" / ".bin" / "tsc"))
    built = run(["npm", "run", "build"], cwd=folder)
    assert built.returncode == 0, built.stdout + built.stderr
    return ["node", str(folder / "dist" / "client.js")]


@pytest.fixture(params=["cpp", "ts"])
def client(request) -> list[str]:
    """The command that runs each sample client."""
    if request.param == "cpp":
        return [str(request.getfixturevalue("cpp_client"))]
    return request.getfixturevalue("ts_client")


def summary(proc: subprocess.CompletedProcess) -> dict:
    found = SUMMARY.search(proc.stdout)
    assert found, proc.stdout + proc.stderr
    keys = ["frames", "answered", "missing", "out_of_order", "errors", "pass", "fail"]
    result = {key: int(value) for key, value in zip(keys, found.groups())}
    result["auroc"] = float(found.group(8)) if found.group(8) else None
    return result


def test_client_streams_the_test_digits_every_result_once_in_order(client, server):
    proc = run([*client, "--target", server.target, "--csv", TEST_CSV, "--normal-labels",
                "7,8", "--anomaly-labels", "2"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    got = summary(proc)
    assert got["frames"] == got["answered"] == 300  # 100 each of 7, 8 and 2
    assert got["missing"] == got["out_of_order"] == got["errors"] == 0
    assert got["pass"] + got["fail"] == 300
    assert got["auroc"] is not None and 0.5 < got["auroc"] <= 1.0
    verdicts = [line for line in proc.stdout.splitlines() if "VERDICT_" in line]
    assert [int(line.split()[0]) for line in verdicts] == list(range(300))
    assert verdicts[0].split()[1] == "csv-row-2-label-8"  # the file's first digit


def test_client_reports_a_bad_frame_and_goes_on(client, server, tmp_path):
    from PIL import Image

    (tmp_path / "good").mkdir()
    (tmp_path / "scratch").mkdir()
    Image.new("L", (28, 28), 0).save(tmp_path / "good" / "a.png")
    Image.new("L", (28, 28), 255).save(tmp_path / "scratch" / "c.png")
    (tmp_path / "scratch" / "b.png").write_bytes(b"not a png at all")
    proc = run([*client, "--target", server.target, "--folder", tmp_path, "--mode", "fast"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("0 good/a.png VERDICT_")
    assert lines[1].startswith("1 scratch/b.png error code 3: ")  # INVALID_ARGUMENT
    assert lines[2].startswith("2 scratch/c.png VERDICT_")
    assert summary(proc)["errors"] == 1


def test_client_names_the_file_and_row_of_bad_input(client, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,1x1,1x2,1x3,1x4\n7,0,0,0,0\n2,0,300,0,0\n")
    proc = run([*client, "--target", "localhost:1", "--csv", bad])
    assert proc.returncode == 2
    assert f"{bad}, row 3: not an integer label or pixel 0..255: '300'" in proc.stderr


class Misbehaving:
    """A real gRPC server that answers StreamInspect wrongly: `swap` sends the second
    frame's result first, `drop` never answers the last frame."""

    def __init__(self, fault: str):
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        from anogan.v1 import inspection_pb2 as pb
        from anogan.v1 import inspection_pb2_grpc as pb_grpc

        fault_of = fault

        class Servicer(pb_grpc.InspectionServiceServicer):
            def StreamInspect(self, requests, context):
                frames = [r.frame for r in requests if r.WhichOneof("request") == "frame"]
                results = [pb.InspectionResult(frame_id=f.frame_id, sequence=f.sequence,
                                               verdict=pb.VERDICT_PASS, score=1.0)
                           for f in frames]
                if fault_of == "swap":
                    results[0], results[1] = results[1], results[0]
                else:
                    results = results[:-1]
                for result in results:
                    yield pb.StreamInspectResponse(result=result)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_InspectionServiceServicer_to_server(Servicer(), self.server)
        checker = health.HealthServicer()
        checker.set("anogan.v1.InspectionService", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(checker, self.server)
        self.port = self.server.add_insecure_port("localhost:0")
        self.server.start()

    def stop(self):
        threading.Thread(target=self.server.stop, args=(None,)).start()


@pytest.mark.parametrize("fault", ["swap", "drop"])
def test_client_exits_non_zero_on_a_missing_or_out_of_order_result(client, fault):
    wrong = Misbehaving(fault)
    try:
        proc = run([*client, "--target", f"localhost:{wrong.port}", "--csv", TEST_CSV,
                    "--limit", "5", "--quiet"])
    finally:
        wrong.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = summary(proc)
    if fault == "swap":
        assert "out of order: result for sequence 1 where 0 was due" in proc.stderr
        assert got["out_of_order"] >= 1
    else:
        assert got["answered"] == 4 and got["missing"] == 1
