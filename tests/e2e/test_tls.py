"""`llmos serve --tls-cert/--tls-key`: the API over https, checked against the
certificate by the official client and the CLI."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.test_cli import llmos
from tests.conftest import free_port, stop_process


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, valid for a day."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "llmos test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_the_api_over_https(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    trust = ssl.create_default_context(cafile=str(cert))
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    log = tmp_path / "server.out"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llmos", "serve", "--port", str(port), "--no-worker",
             "--tls-cert", str(cert), "--tls-key", str(key)],
            env=os.environ | {"LLMOS_HOME": str(tmp_path / "home")}, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-2000:]
            try:
                if httpx.get(f"{url}/healthz", verify=trust, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.25)
        with openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0,
                           http_client=httpx.Client(verify=trust)) as client:
            assert client.models.list().object == "list"  # (over a verified https)
        version = llmos("version", "--url", url, env={"SSL_CERT_FILE": str(cert)})
        assert version.returncode == 0 and "server" in version.stdout, version.stderr
        try:  # plain http to the https port: refused
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            raise AssertionError("plain http was answered")
        except httpx.HTTPError:
            pass
    finally:
        stop_process(process, timeout=20)


def test_a_certificate_needs_its_key(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    result = llmos("serve", "--tls-cert", str(cert), env={"LLMOS_HOME": str(tmp_path)})
    assert result.returncode == 2 and "tls_cert and tls_key go together" in result.stderr
