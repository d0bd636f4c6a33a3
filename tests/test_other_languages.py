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
import tempfile
import threading
from concurrent import futures
from dataclasses import dataclass, field
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


def missing(tools) -> list[str]:
    """The tools (commands on PATH, or paths) this machine lacks."""
    return [tool for tool in tools if not (Path(tool).exists() or shutil.which(tool))]


def need(*tools: str) -> None:
    if lacking := missing(tools):
        pytest.skip(f"not installed: {', '.join(lacking)} (`make proto-tools` installs them)")


def run(command: list, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True,
                          timeout=timeout, check=False, **kwargs)


def generating(out: Path, *languages: str) -> list:
    """`make proto`'s generator, for these languages, into out/<language>/."""
    return [sys.executable, ROOT / "proto" / "generate.py", "--lang", ",".join(languages),
            "--out", out]


def test_make_proto_writes_six_languages_and_the_same_bytes_twice(tmp_path):
    missing = generate.missing_tools(OTHERS)
    if missing:
        pytest.skip(f"not installed: {'; '.join(missing)}")
    for attempt in ("first", "second"):
        proc = run(generating(tmp_path / attempt, *OTHERS))
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
    proc = run(generating(tmp_path, "go"), env=env)
    assert proc.returncode != 0
    assert "protoc-gen-go for go (apt-get install" in proc.stderr
    assert "make proto-tools" in proc.stderr
    assert not (tmp_path / "go").exists()


# --- builds: the Go and Java stubs compiled, the sample clients built --------------------


@dataclass
class Built:
    """A build's steps (each command's output kept for the assertion) and what it made."""

    steps: list[subprocess.CompletedProcess] = field(default_factory=list)
    artifact: list[str] = field(default_factory=list)  # the command that runs a client

    def step(self, command: list, **kwargs) -> bool:
        self.steps.append(run(["nice", "-n", "10", *command], timeout=600, **kwargs))
        return self.steps[-1].returncode == 0

    def check(self) -> None:
        failed = [p for p in self.steps if p.returncode != 0]
        assert not failed, "\n".join(f"{p.args}: {p.stdout}{p.stderr}" for p in failed)


def build_go(out: Path) -> Built:
    built = Built()
    if not built.step(generating(out / "gen", "go")):
        return built
    # GOPATH mode against Debian's sources, at the go_package path of inspection.proto.
    package = out / "gopath/src/github.com/anogan-inspect/anogan-inspect/gen"
    package.mkdir(parents=True)
    (package / "go").symlink_to(out / "gen" / "go")
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{out / 'gopath'}:{GOCODE}",
           "GOCACHE": str(out / "gocache"), "GOFLAGS": ""}
    built.step(["go", "build", "./..."], cwd=package / "go", env=env)
    return built


JAVA_JARS = [JARS / f"{name}.jar" for name in (
    "protobuf", "grpc-api", "grpc-stub", "grpc-protobuf", "grpc-protobuf-lite", "grpc-core",
    "guava", "geronimo-annotation-1.3-spec")]


def build_java(out: Path) -> Built:
    built = Built()
    java = out / "gen" / "java"
    # google.rpc.Status comes from proto-google-common-protos in a Java project; here, from
    # the vendored proto.
    if not (built.step(generating(out / "gen", "java"))
            and built.step(["protoc", f"-I{ROOT / 'proto'}", f"--java_out={java}",
                            "google/rpc/status.proto"])):
        return built
    built.step(["javac", "-nowarn", "-d", out / "classes", "-cp",
                os.pathsep.join(map(str, JAVA_JARS)), *sorted(java.rglob("*.java"))])
    built.artifact = [str(out / "classes")]
    return built


def build_cpp(out: Path) -> Built:
    built = Built()
    if built.step(["cmake", "-S", ROOT / "clients" / "cpp", "-B", out]):
        built.step(["cmake", "--build", out, "-j", str(os.cpu_count() or 2)])
    built.artifact = [str(out / "anogan-client-cpp")]
    return built


def build_ts(out: Path) -> Built:
    """In a copy of clients/ts (its node_modules linked), as `npm run build` does there."""
    built = Built()
    folder = ROOT / "clients" / "ts"
    (out / "src").mkdir(parents=True)
    for name in ("package.json", "tsconfig.json", "src/client.ts"):
        shutil.copy2(folder / name, out / name)
    (out / "node_modules").symlink_to(folder / "node_modules")
    if built.step(generating(out / "src" / "gen", "ts")):
        built.step([folder / "node_modules" / ".bin" / "tsc", "-p", out])
    built.artifact = ["node", str(out / "dist" / "client.js")]
    return built


# name: (what it needs, how it builds)
BUILDS = {
    "cpp": (["cmake", "c++", "protoc", "grpc_cpp_plugin"], build_cpp),
    "ts": (["node", "npm", "protoc", str(ROOT / "clients/ts/node_modules/.bin/tsc")], build_ts),
    "go": (["protoc", "protoc-gen-go", "protoc-gen-go-grpc", "go",
            str(GOCODE / "src/google.golang.org/grpc"),
            str(GOCODE / "src/google.golang.org/genproto")], build_go),
    "java": (["protoc", "grpc_java_plugin", "javac", *map(str, JAVA_JARS)], build_java),
}


class Background:
    """The builds the selected tests need, started once they are collected (conftest.py),
    niced and one at a time, so that they take the CPU the rest of the suite leaves idle;
    each test waits for its own (and starts it, if nothing did)."""

    def __init__(self):
        self.pool = futures.ThreadPoolExecutor(max_workers=1)
        self.folder: Path | None = None  # made with the first build
        self.builds: dict[str, futures.Future] = {}

    def start(self, items=()) -> None:
        """Start the builds of these collected test items (their `client` parameter, or
        the build their name ends with)."""
        for item in items:
            params = getattr(item, "callspec", None)
            name = params.params.get("client") if params else None
            name = name or next((b for b in BUILDS if item.name.endswith(f"_{b}_stubs_compile")),
                                None)
            if name:
                self.submit(name)

    def submit(self, name: str) -> None:
        tools, build = BUILDS[name]
        if name not in self.builds and not missing(tools):
            self.folder = self.folder or Path(tempfile.mkdtemp(prefix="anogan-other-languages-"))
            self.builds[name] = self.pool.submit(build, self.folder / name)

    def result(self, name: str) -> Built:
        need(*BUILDS[name][0])
        self.submit(name)
        built = self.builds[name].result()
        built.check()
        return built

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


BACKGROUND = Background()


# --- the sample clients ----------------------------------------------------------------


@pytest.fixture(params=["cpp", "ts"])
def client(request) -> list[str]:
    """The command that runs each sample client."""
    return BACKGROUND.result(request.param).artifact


def summary(proc: subprocess.CompletedProcess) -> dict:
    found = SUMMARY.search(proc.stdout)
    assert found, proc.stdout + proc.stderr
    keys = ["frames", "answered", "missing", "out_of_order", "errors", "pass", "fail"]
    result = {key: int(value) for key, value in zip(keys, found.groups())}
    result["auroc"] = float(found.group(8)) if found.group(8) else None
    return result


@pytest.mark.slow
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


@pytest.mark.slow
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
    assert lines[1].startswith("1 scratch/b.png error code 3 INVALID_ARGUMENT: ")
    assert lines[2].startswith("2 scratch/c.png VERDICT_")
    assert summary(proc)["errors"] == 1


@pytest.mark.slow
def test_client_names_the_file_and_row_of_bad_input(client, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label,1x1,1x2,1x3,1x4\n7,0,0,0,0\n2,0,300,0,0\n")
    proc = run([*client, "--target", "localhost:1", "--csv", bad])
    assert proc.returncode == 2
    assert f"{bad}, row 3: not an integer label or pixel 0..255: '300'" in proc.stderr


class Misbehaving:
    """A real gRPC server that answers StreamInspect wrongly: `swap` sends the second
    frame's result first, `drop` never answers the last frame, `abort` answers three frames
    and ends the stream with RESOURCE_EXHAUSTED while the client still has frames to send."""

    def __init__(self, fault: str):
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        from anogan.v1 import inspection_pb2 as pb
        from anogan.v1 import inspection_pb2_grpc as pb_grpc

        fault_of = fault

        class Servicer(pb_grpc.InspectionServiceServicer):
            def StreamInspect(self, requests, context):
                if fault_of == "abort":
                    frames = (r.frame for r in requests if r.WhichOneof("request") == "frame")
                    for _, frame in zip(range(3), frames):
                        yield pb.StreamInspectResponse(result=pb.InspectionResult(
                            frame_id=frame.frame_id, sequence=frame.sequence))
                    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "enough")
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


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["swap", "drop", "abort"])
def test_client_exits_non_zero_on_a_missing_or_out_of_order_result(client, fault):
    wrong = Misbehaving(fault)
    try:  # abort: all 1,000 digits, more than HTTP/2's window, so that writes must wait
        proc = run([*client, "--target", f"localhost:{wrong.port}", "--csv", TEST_CSV,
                    *(["--limit", "5"] if fault != "abort" else []), "--quiet"], timeout=60)
    finally:
        wrong.stop()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    got = summary(proc)
    if fault == "swap":
        assert "out of order: result for sequence 1 where 0 was due" in proc.stderr
        assert got["out_of_order"] >= 1
    elif fault == "drop":
        assert got["answered"] == 4 and got["missing"] == 1
    else:
        assert got["answered"] == 3 and got["missing"] == 997
        assert "stream ended with 8 RESOURCE_EXHAUSTED: enough" in proc.stderr


@pytest.mark.slow
def test_generated_go_stubs_compile():
    BACKGROUND.result("go")


@pytest.mark.slow
def test_generated_java_stubs_compile():
    classes = Path(BACKGROUND.result("java").artifact[0])
    assert (classes / "com/anogan/inspect/v1/InspectionServiceGrpc.class").is_file()
