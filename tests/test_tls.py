"""TLS and mutual TLS against a real server, with a CA and certificates made here."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from anogan.v1 import inspection_pb2 as pb
from anogan.v1 import inspection_pb2_grpc as pb_grpc
from anogan_inspect.clients import stream_client
from anogan_inspect.clients.launcher import ServerProcess
from tests.conftest import ROOT, TEST_CSV

# Each test starts `anogan-serve` with TLS files: a process of its own.
pytestmark = pytest.mark.slow

FRAMES = ["--csv", str(TEST_CSV), "--normal-labels", "7,8", "--anomaly-labels", "2",
          "--limit", "12", "--mode", "fast", "--quiet"]


def issue(directory: Path, name: str, ca: tuple | None = None) -> tuple:
    """A key and certificate for `name` (signed by `ca`, else a self-signed CA), as PEM files.

    Returns (certificate, key, certificate path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = (ca[0], ca[1]) if ca else (None, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(issuer_cert.subject if issuer_cert else subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None),
                              critical=True))
    if ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key, cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, tuple]:
    directory = tmp_path_factory.mktemp("pki")
    ca = issue(directory, "ca")
    return {"ca": ca, "server": issue(directory, "server", ca),
            "client": issue(directory, "client", ca)}


def serve_tls(bundle: Path, log: Path, pki: dict, *extra: str) -> ServerProcess:
    return ServerProcess([str(bundle)], log, "--device", "cpu", "--tls-cert",
                         str(pki["server"][2]), "--tls-key", str(pki["server"][3]), *extra,
                         cwd=ROOT)


def test_tls_serves_clients_that_trust_its_ca(tiny_bundle, tmp_path, pki):
    proc = serve_tls(tiny_bundle, tmp_path / "server.log", pki)
    try:
        assert stream_client.main(["--target", proc.target, *FRAMES,
                                   "--tls-ca", str(pki["ca"][2])]) == 0
        with proc.channel() as plain:  # plain text to a TLS port: no connection
            with pytest.raises(grpc.RpcError) as err:
                pb_grpc.InspectionServiceStub(plain).ListModels(pb.ListModelsRequest(),
                                                                timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "TLS" in proc.log_path.read_text()
        assert proc.stop() == 0
    finally:
        proc.stop(timeout=10)


def test_mutual_tls_requires_a_client_certificate(tiny_bundle, tmp_path, pki, capsys):
    proc = serve_tls(tiny_bundle, tmp_path / "server.log", pki,
                     "--tls-client-ca", str(pki["ca"][2]))
    try:
        trust = ["--target", proc.target, *FRAMES, "--tls-ca", str(pki["ca"][2])]
        assert stream_client.main([*trust, "--connect-timeout", "1"]) == 2
        err = capsys.readouterr().err
        assert f"cannot connect to {proc.target}:" in err and "--tls-cert/--tls-key" in err
        assert stream_client.main([*trust, "--tls-cert", str(pki["client"][2]),
                                   "--tls-key", str(pki["client"][3])]) == 0
        assert proc.stop() == 0
    finally:
        proc.stop(timeout=10)


def test_server_refuses_half_a_tls_config(tiny_bundle, pki, capsys):
    from anogan_inspect.server.cli import main as serve_main

    assert serve_main(["--bundle", str(tiny_bundle), "--tls-cert", str(pki["server"][2])]) == 2
    assert "--tls-cert and --tls-key together" in capsys.readouterr().err
    assert serve_main(["--bundle", str(tiny_bundle), "--tls-cert", "/nonexistent.crt",
                       "--tls-key", str(pki["server"][3]), "--port", "0"]) == 2
    assert "cannot read TLS file /nonexistent.crt" in capsys.readouterr().err


def test_a_key_that_is_not_the_certificates_stops_the_start_before_models_load(pki, tmp_path,
                                                                                capsys):
    from anogan_inspect.server.cli import main as serve_main

    missing_bundle = str(tmp_path / "no-bundle")  # read after TLS: its error would show
    assert serve_main(["--bundle", missing_bundle, "--tls-cert", str(pki["server"][2]),
                       "--tls-key", str(pki["client"][3]), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert f"TLS certificate {pki['server'][2]} and key {pki['client'][3]} do not go" in err
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    assert serve_main(["--bundle", missing_bundle, "--tls-cert", str(pki["server"][2]),
                       "--tls-key", str(pki["server"][3]), "--tls-client-ca", str(garbage),
                       "--port", "0"]) == 2
    assert f"cannot use TLS client CA {garbage}" in capsys.readouterr().err
