"""Bearer tokens: every RPC but health needs one (reflection by choice), the client sends
it, SIGHUP's reload takes effect on a running server, and an open server says so."""

from __future__ import annotations

import logging
import os
import subprocess

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients import stream_client
from anogan_inspect.server.app import reload_tokens
from anogan_inspect.server.auth import TokenStore, bearer_token
from anogan_inspect.server.models import EngineOptions
from tests.conftest import TEST_CSV, InProcessServer

DIGITS = ["--csv", str(TEST_CSV), "--normal-labels", "7,8", "--anomaly-labels", "2",
          "--mode", "fast", "--limit", "12", "--quiet"]


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "tokens"
    path.write_text("# line 1 camera\nsecret-one\n\n  secret-two  \n")
    return path


@pytest.fixture(scope="module")
def guarded(tiny_bundle, token_file):
    running = InProcessServer([f"tiny={tiny_bundle}"], EngineOptions(device="cpu"),
                              auth_tokens=token_file)
    yield running
    running.stop()


def call(target: str, token: str | None, rpc: str = "GetModel"):
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.InspectionServiceStub(channel)
        if rpc == "GetModel":
            return stub.GetModel(pb.GetModelRequest(), metadata=metadata, timeout=30)
        frames = [pb.StreamInspectRequest(config=pb.InspectionConfig(mode=pb.MODE_FAST))]
        return list(stub.StreamInspect(iter(frames), metadata=metadata, timeout=30))


def test_token_file_lines_and_comparison(token_file, tmp_path):
    tokens = TokenStore(token_file)
    assert len(tokens) == 2
    assert tokens.accepts("secret-one") and tokens.accepts("secret-two")
    assert not tokens.accepts("secret-on") and not tokens.accepts("# line 1 camera")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no token"):
        TokenStore(empty)
    with pytest.raises(ValueError, match="cannot read the token file"):
        TokenStore(tmp_path / "missing")
    assert bearer_token([("Authorization", "Bearer abc ")]) == "abc"
    assert bearer_token([("authorization", "Basic abc")]) is None


def test_calls_without_an_accepted_token_are_unauthenticated(guarded):
    assert call(guarded.target, "secret-two").model.name == "tiny"
    assert call(guarded.target, "secret-one", "StreamInspect") == []
    for token, message in ((None, "this server requires a token"),
                           ("wrong", "not one this server accepts")):
        for rpc in ("GetModel", "StreamInspect"):
            with pytest.raises(grpc.RpcError) as err:
                call(guarded.target, token, rpc)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert message in err.value.details()


def test_health_stays_open_for_probes(guarded):
    with grpc.insecure_channel(guarded.target) as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=30)
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_needs_the_token_unless_opened(guarded, tiny_bundle, token_file, venv_bin):
    def grpcurl(target: str, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv_bin / "grpcurl"), "-plaintext", *extra, target, "list"],
                              capture_output=True, text=True, timeout=60, check=False)

    refused = grpcurl(guarded.target)
    assert refused.returncode != 0 and "Unauthenticated" in refused.stderr
    listed = grpcurl(guarded.target, "-H", "authorization: Bearer secret-one")
    assert listed.returncode == 0 and "anogan.v1.InspectionService" in listed.stdout
    opened = InProcessServer([f"tiny={tiny_bundle}"], EngineOptions(device="cpu"),
                             auth_tokens=token_file, open_reflection=True)
    try:
        assert "anogan.v1.InspectionService" in grpcurl(opened.target).stdout
        with pytest.raises(grpc.RpcError):  # the service itself still needs the token
            call(opened.target, None)
    finally:
        opened.stop()


def test_the_client_sends_its_token(guarded, token_file, tmp_path, capsys, monkeypatch):
    mine = tmp_path / "mine"
    mine.write_text("# mine\nsecret-two\nsecret-one\n")
    assert stream_client.main(["--target", guarded.target, *DIGITS,
                               "--token-file", str(mine)]) == 0
    monkeypatch.setenv("ANOGAN_TOKEN", "secret-one")
    assert stream_client.main(["--target", guarded.target, *DIGITS]) == 0
    monkeypatch.delenv("ANOGAN_TOKEN")
    capsys.readouterr()
    assert stream_client.main(["--target", guarded.target, *DIGITS]) == 2
    err = capsys.readouterr().err
    assert "this server requires a token" in err and "pass --token-file" in err


def test_a_reload_takes_effect_on_the_running_server(guarded, token_file, caplog):
    tokens = guarded.server.tokens
    before = token_file.read_text()
    try:
        token_file.write_text("secret-three\n")
        reload_tokens(tokens)  # what SIGHUP runs
        assert call(guarded.target, "secret-three").model.name == "tiny"
        with pytest.raises(grpc.RpcError):
            call(guarded.target, "secret-one")  # revoked
        token_file.write_text("\n")
        with caplog.at_level(logging.ERROR):
            reload_tokens(tokens)  # unusable: the tokens held stay
        assert "keeping the 1 token(s) loaded before" in caplog.text
        assert call(guarded.target, "secret-three").model.name == "tiny"
    finally:
        token_file.write_text(before)
        reload_tokens(tokens)


def test_an_open_server_on_every_interface_warns(tiny_bundle, caplog):
    with caplog.at_level(logging.WARNING):
        running = InProcessServer([f"tiny={tiny_bundle}"], EngineOptions(device="cpu"),
                                  host="0.0.0.0")
        running.stop()
    assert "in plain text without tokens: anyone who reaches port" in caplog.text
    assert "--auth-token-file" in caplog.text
    assert os.environ.get("ANOGAN_TOKEN") is None
