"""The registry over TLS: the service presents a certificate (--tls_certificate/--tls_private_key)
and the CLI verifies it against the CA given by --tls-ca or $FLOTILLA_TLS_CA, for gRPC push/pull
and for the Hub HTTP API on the same certificate. Plaintext and an unknown CA are refused."""
from __future__ import annotations

import json
import os
import ssl
import subprocess
import urllib.request

from conftest import binary


def make_certificate(directory):
    """A self-signed certificate for 127.0.0.1, made by the openssl command line."""
    certificate, key = directory / "registry.pem", directory / "registry.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
                   check=True, capture_output=True)
    return certificate, key


def flotilla(*arguments, env=None):
    return subprocess.run([str(binary("flotilla")), *arguments], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_push_and_pull_over_tls(start_service, tmp_path):
    certificate, key = make_certificate(tmp_path)
    registry = start_service("registry", f"--tls_certificate={certificate}", f"--tls_private_key={key}")
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "weights.bin").write_bytes(os.urandom(3 << 20))

    pushed = flotilla("push", str(folder), "acme/secure", "--json", "--registry", registry.grpc_address,
                      "--tls-ca", str(certificate))
    assert pushed.returncode == 0, pushed.stderr
    commit = json.loads(pushed.stdout)["commit_id"]
    pulled = flotilla("pull", "acme/secure", str(tmp_path / "pulled"), "--registry", registry.grpc_address,
                      env={"FLOTILLA_TLS_CA": str(certificate)})
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "pulled" / "weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()

    # The Hub HTTP API serves on the same certificate.
    context = ssl.create_default_context(cafile=str(certificate))
    url = f"https://{registry.http_address}/api/models/acme/secure"
    with urllib.request.urlopen(url, context=context) as response:
        assert json.loads(response.read())["sha"] == commit

    plaintext = flotilla("ls", "acme/secure", "--registry", registry.grpc_address)
    assert plaintext.returncode != 0 and "UNAVAILABLE" in plaintext.stderr
    (tmp_path / "other").mkdir()
    other_certificate, _ = make_certificate(tmp_path / "other")
    untrusted = flotilla("ls", "acme/secure", "--registry", registry.grpc_address, "--tls-ca", str(other_certificate))
    assert untrusted.returncode != 0 and "UNAVAILABLE" in untrusted.stderr


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path):
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    result = flotilla("ls", "--registry", "127.0.0.1:1", "--tls-ca", str(bogus))
    assert result.returncode == 2 and "not a readable PEM certificate file" in result.stderr
