"""The contract (proto/): self-contained, and guarded against breaking changes by buf
against the released descriptor set (proto/anogan-v1.binpb)."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

PROTO = ROOT / "proto"
BUF = shlex.split(os.environ.get("BUF", "npx --yes @bufbuild/buf@1.75.0"))


def descriptor_set(proto_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """protoc with nothing but proto_dir and protoc's own well-known types."""
    import grpc_tools

    return subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}",
         f"-I{Path(grpc_tools.__file__).parent / '_proto'}", "--include_imports",
         f"--descriptor_set_out={out}", "anogan/v1/inspection.proto"],
        capture_output=True, text=True, check=False)


def test_protoc_needs_nothing_but_the_proto_folder(tmp_path):
    proc = descriptor_set(PROTO, tmp_path / "set.binpb")
    assert proc.returncode == 0, proc.stderr
    assert (PROTO / "google" / "rpc" / "status.proto").is_file()


def breaking(tmp_path, edit) -> subprocess.CompletedProcess:
    """buf breaking of proto/ with `edit` applied to inspection.proto, against the
    released contract."""
    if shutil.which(BUF[0]) is None:
        pytest.skip(f"{BUF[0]} is not installed: buf runs from npm (`make test` needs it)")
    changed = tmp_path / "proto"
    shutil.copytree(PROTO, changed)
    source = changed / "anogan" / "v1" / "inspection.proto"
    source.write_text(edit(source.read_text()))
    image = tmp_path / "changed.binpb"
    built = descriptor_set(changed, image)
    assert built.returncode == 0, built.stderr
    return subprocess.run([*BUF, "breaking", str(image), "--against",
                           str(PROTO / "anogan-v1.binpb"), "--config",
                           str(PROTO / "buf.yaml"), "--path", "anogan/v1/inspection.proto"],
                          capture_output=True, text=True, check=False, cwd=tmp_path)


def test_removing_renumbering_or_retyping_a_field_breaks_and_adding_does_not(tmp_path):
    field = "  int32 worker = 2;\n"  # GetServerStatsResponse's
    assert field in (PROTO / "anogan" / "v1" / "inspection.proto").read_text()
    edits = {
        "removed": lambda text: text.replace(field, ""),
        "renumbered": lambda text: text.replace(field, "  int32 worker = 3;\n"),
        "retyped": lambda text: text.replace(field, "  string worker = 2;\n"),
    }
    for name, edit in edits.items():
        proc = breaking(tmp_path / name, edit)
        assert proc.returncode != 0, f"{name}: buf breaking passed"
        assert "worker" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    added = breaking(tmp_path / "added", lambda text: text.replace(
        field, field + "  // A new field.\n  int32 spare = 3;\n"))
    assert added.returncode == 0, added.stdout + added.stderr


def reflect(target: str, service: str, *requests) -> list:
    """ServerReflectionInfo on `service` (v1 or v1alpha: the same messages on the wire)."""
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    with grpc.insecure_channel(target) as channel:
        call = channel.stream_stream(
            f"/{service}/ServerReflectionInfo",
            request_serializer=rpb.ServerReflectionRequest.SerializeToString,
            response_deserializer=rpb.ServerReflectionResponse.FromString)
        return list(call(iter(requests), timeout=30))


def test_reflection_v1_and_v1alpha_serve_the_contract_with_its_comments(server):
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as rpb

    for version in ("v1", "v1alpha"):
        listed, contract, reflection, unknown, method, health, extensions = reflect(
            server.target, f"grpc.reflection.{version}.ServerReflection",
            rpb.ServerReflectionRequest(list_services=""),
            rpb.ServerReflectionRequest(file_containing_symbol="anogan.v1.Frame.sequence"),
            rpb.ServerReflectionRequest(
                file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
            rpb.ServerReflectionRequest(file_containing_symbol="anogan.v1.NoSuchThing"),
            rpb.ServerReflectionRequest(
                file_containing_symbol="anogan.v1.InspectionService.StreamInspect"),
            rpb.ServerReflectionRequest(file_containing_symbol="grpc.health.v1.Health.Check"),
            rpb.ServerReflectionRequest(all_extension_numbers_of_type="anogan.v1.Frame"))
        assert {s.name for s in listed.list_services_response.service} == {
            "anogan.v1.InspectionService", "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"}
        files = [descriptor_pb2.FileDescriptorProto.FromString(data)
                 for data in contract.file_descriptor_response.file_descriptor_proto]
        assert files[0].name == "anogan/v1/inspection.proto"
        assert {"google/rpc/status.proto", "google/protobuf/timestamp.proto"} <= {
            f.name for f in files}  # with its imports
        comments = {loc.leading_comments.strip()
                    for loc in files[0].source_code_info.location}
        assert "Scores frames against the served models." in comments
        assert "Caller's sequence number, echoed in the result." in comments
        own = descriptor_pb2.FileDescriptorProto.FromString(
            reflection.file_descriptor_response.file_descriptor_proto[0])
        assert own.package == f"grpc.reflection.{version}"
        assert [s.name for s in own.service] == ["ServerReflection"]
        assert unknown.error_response.error_code == 5  # NOT_FOUND
        for answer, name in ((method, "anogan/v1/inspection.proto"),
                             (health, "grpc_health/v1/health.proto")):  # methods, by name
            first = answer.file_descriptor_response.file_descriptor_proto[0]
            assert descriptor_pb2.FileDescriptorProto.FromString(first).name == name
        assert extensions.all_extension_numbers_response.base_type_name == "anogan.v1.Frame"
        assert not extensions.all_extension_numbers_response.extension_number
