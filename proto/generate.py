"""Generate the protobuf/gRPC stubs from proto/ (`make proto`), or check they are current.

    python proto/generate.py                 # Python stubs + descriptor set (checked in)
    python proto/generate.py --lang ts --out clients/ts/src/gen    # one language
    python proto/generate.py --check         # exit 1 when the checked-in files differ
    python proto/generate.py --lang all      # also C++, Go, Java, C#, TypeScript in gen/
    python proto/generate.py --baseline      # proto/anogan-v1.binpb: the released contract

Checked in (anogan/v1/): the Python stubs and inspection.binpb, the contract's descriptor
set with its imports and comments (the server's reflection serves it; buf, grpcurl and
Postman read it). Generated into gen/<language>/ (git-ignored) by the generators of
GENERATORS below, from Debian's packages and npm (`make proto-tools` installs them):
messages and gRPC service stubs, the same bytes on every run.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
# The contract's own files; proto/google/ and proto/grpc/ hold what clients import beside
# it (vendored, not the contract: languages with a standard package for them use that).
SOURCES = sorted(p.relative_to(PROTO_DIR).as_posix()
                 for p in (PROTO_DIR / "anogan").rglob("*.proto"))
STATUS = "google/rpc/status.proto"
HEALTH = "grpc/health/v1/health.proto"
BASELINE = PROTO_DIR / "anogan-v1.binpb"  # the released contract, for `buf breaking`
DESCRIPTOR_SET = "inspection.binpb"
GENERATED = ["inspection_pb2.py", "inspection_pb2.pyi", "inspection_pb2_grpc.py",
             DESCRIPTOR_SET]
# protobuf-ts's plugin, pinned by the TypeScript client's package-lock.json.
TS_PLUGIN = ROOT / "clients" / "ts" / "node_modules" / ".bin" / "protoc-gen-ts"


@dataclass(frozen=True)
class Generator:
    """One language: the protoc flags (OUT stands for its output folder), the plugins they
    need, and the files it generates (imports with a standard package in that language are
    left to it: Go's genproto and grpc-go, Java's proto-google-common-protos and
    grpc-services, C#'s Google.Api.CommonProtos and Grpc.HealthCheck)."""

    flags: tuple[str, ...]
    plugins: tuple[str, ...]  # executables, looked up on PATH unless a path
    files: tuple[str, ...]
    install: str  # how to get the plugins


DEBIAN = "apt-get install protobuf-compiler libprotobuf-dev"
GENERATORS = {
    # C++ has no standard package for google.rpc.Status or the health service.
    "cpp": Generator(("--cpp_out=OUT", "--grpc_out=OUT",
                      "--plugin=protoc-gen-grpc=PLUGIN0"),
                     ("grpc_cpp_plugin",), (*SOURCES, STATUS, HEALTH),
                     f"{DEBIAN} protobuf-compiler-grpc libgrpc++-dev"),
    "go": Generator(("--go_out=OUT", "--go_opt=paths=source_relative",
                     "--go-grpc_out=OUT", "--go-grpc_opt=paths=source_relative"),
                    ("protoc-gen-go", "protoc-gen-go-grpc"), tuple(SOURCES),
                    f"{DEBIAN} protoc-gen-go protoc-gen-go-grpc"),
    "java": Generator(("--java_out=OUT", "--grpc-java_out=OUT",
                       "--plugin=protoc-gen-grpc-java=PLUGIN0"),
                      ("grpc_java_plugin",), tuple(SOURCES),
                      f"{DEBIAN} protobuf-compiler-grpc-java-plugin"),
    # protoc writes C# messages itself; the service stubs come from Grpc.Tools (NuGet) in
    # the project's .csproj (docs/clients.md, "Clients in other languages").
    "csharp": Generator(("--csharp_out=OUT",), (), tuple(SOURCES), DEBIAN),
    # protobuf-ts: messages, and @grpc/grpc-js clients; it writes the imports too.
    "ts": Generator(("--plugin=protoc-gen-ts=PLUGIN0", "--ts_out=OUT",
                     "--ts_opt=client_grpc1"),
                    (str(TS_PLUGIN),), (*SOURCES, STATUS, HEALTH),
                    "make proto-tools (npm ci in clients/ts)"),
}
LANGUAGES = ["python", *GENERATORS]


def include_dirs() -> list[str]:
    """proto/ (with its vendored imports) and protoc's well-known types: nothing else, so
    the contract builds from this repository alone."""
    import grpc_tools

    return [str(PROTO_DIR), str(Path(grpc_tools.__file__).parent / "_proto")]


def protoc(args: list[str]) -> None:
    """grpcio-tools' protoc (pinned): the Python stubs and descriptor sets."""
    from grpc_tools import protoc as grpc_protoc

    command = ["grpc_tools.protoc", *(f"-I{d}" for d in include_dirs()), *args, *SOURCES]
    if grpc_protoc.main(command) != 0:
        sys.exit(f"protoc failed: {' '.join(command)}")


def descriptor_set(path: Path) -> list[str]:
    """protoc's flags for the contract's descriptor set: imports and comments included."""
    return [f"--descriptor_set_out={path}", "--include_imports", "--include_source_info"]


def generate_python(out: Path) -> None:
    (out / "anogan" / "v1").mkdir(parents=True, exist_ok=True)
    protoc([f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}",
            *descriptor_set(out / "anogan" / "v1" / DESCRIPTOR_SET)])


def system_protoc() -> str | None:
    """$PROTOC, else the protoc on PATH outside node_modules (npm puts protobuf-ts's own
    `protoc`, which downloads a release at first use, ahead of it in `npm run`)."""
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if "node_modules" not in Path(d).parts)
    return os.environ.get("PROTOC") or shutil.which("protoc", path=path)


def missing_tools(languages: list[str]) -> list[str]:
    """What the languages' generators need and this machine lacks, with how to install it."""
    missing = [] if system_protoc() else [f"protoc ({DEBIAN})"]
    for language in languages:
        generator = GENERATORS[language]
        missing += [f"{Path(plugin).name} for {language} ({generator.install})"
                    for plugin in generator.plugins
                    if not (Path(plugin).is_file() or shutil.which(plugin))]
    return missing


def generate(language: str, out: Path) -> tuple[list[Path], list[str]]:
    """Stubs for one language into out/ (emptied first); returns the files written and the
    protoc command. Debian's protoc, so that the C++ stubs match Debian's libprotobuf."""
    generator = GENERATORS[language]
    plugins = [shutil.which(p) or p for p in generator.plugins]
    flags = []
    for flag in generator.flags:
        flag = flag.replace("OUT", str(out))
        for i, plugin in enumerate(plugins):
            flag = flag.replace(f"PLUGIN{i}", plugin)
        flags.append(flag)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    command = [system_protoc(), f"-I{PROTO_DIR}", *flags, *generator.files]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"protoc for {language} failed ({' '.join(command)}):\n{proc.stderr}")
    return sorted(p for p in out.rglob("*") if p.is_file()), command


def check() -> int:
    """Regenerate into a temporary directory and compare with the checked-in files."""
    with tempfile.TemporaryDirectory() as tmp:
        generate_python(Path(tmp))
        stale = [name for name in GENERATED
                 if not (ROOT / "anogan/v1" / name).is_file()
                 or not filecmp.cmp(Path(tmp) / "anogan/v1" / name, ROOT / "anogan/v1" / name,
                                    shallow=False)]
    if stale:
        print(f"stubs out of date with proto/ (run `make proto`, or `python "
              f"proto/generate.py` for Python alone): {', '.join(stale)}")
        return 1
    print("stubs and descriptor set match proto/")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true",
                        help="compare the checked-in Python stubs and descriptor set")
    parser.add_argument("--lang", default="python",
                        help=f"comma-separated, or all: {', '.join(LANGUAGES)} (default: "
                             "python, which is checked in)")
    parser.add_argument("--out", type=Path, default=ROOT / "gen",
                        help="other languages go to OUT/<language>/ (default: gen/)")
    parser.add_argument("--baseline", action="store_true",
                        help=f"write {BASELINE.relative_to(ROOT)}, the contract `buf "
                             "breaking` compares against (when a version is released)")
    args = parser.parse_args()
    if args.check:
        return check()
    if args.baseline:
        protoc(descriptor_set(BASELINE))
        print(f"wrote the released contract {BASELINE.relative_to(ROOT)}")
        return 0
    languages = LANGUAGES if args.lang == "all" else args.lang.split(",")
    unknown = sorted(set(languages) - set(LANGUAGES))
    if unknown:
        parser.error(f"unknown language {', '.join(unknown)}: choose from {LANGUAGES}")
    others = [language for language in languages if language != "python"]
    if "python" in languages:
        generate_python(ROOT)
        # anogan/ stays a namespace package (no __init__.py), so other distributions'
        # anogan.* protos can install beside it; anogan.v1 is a regular package.
        init = ROOT / "anogan" / "v1" / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated by `make proto` from proto/; do not edit."""\n')
        print(f"python: anogan/v1/ ({', '.join(GENERATED)})")
    missing = missing_tools(others)
    if missing:
        sys.exit("missing generators (`make proto-tools` installs them all):\n  "
                 + "\n  ".join(missing))
    for language in others:
        files, command = generate(language, args.out / language)
        text = f"{language}: {len(files)} files in {args.out / language}, by\n  " \
            + shlex.join(command)
        print(text.replace(f"{ROOT}/", ""))  # the command: a template to copy
    return 0


if __name__ == "__main__":
    sys.exit(main())
