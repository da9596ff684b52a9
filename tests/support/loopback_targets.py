"""Small loopback servers that record what reaches them, for the tests of the switches.

    with FakePrometheus() as backend:              # http://127.0.0.1:port, /api/v1/query answers
        backend.queries()                          # the PromQL of every query received
        backend.requests[-1].headers["authorization"]
    certs = make_certificates(tmp_path)            # a CA and a certificate for 127.0.0.1
    with FakePrometheus(tls=certs) as backend:     # https://127.0.0.1:port
        ...
    target = ProbeTarget()                         # /up/... answers 200, /down/... 503
    target.count("/up/health"); target.stop()

The certificates are made with the ``cryptography`` package when it is installed, else
with the ``openssl`` command line.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from tests.support.faulty_backend import SeenRequest, read_request

LOOPBACK = "127.0.0.1"


# --- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Certificates:
    ca: Path  # the CA's certificate: the bundle a client trusts
    cert: Path  # the server's certificate for 127.0.0.1, signed by the CA
    key: Path  # the server's private key


def make_certificates(directory: Path) -> Certificates:
    """A fresh CA and a server certificate it signed, for IP address 127.0.0.1."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _with_openssl(directory)
    return _with_cryptography(directory)


def _with_cryptography(directory: Path) -> Certificates:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gateway-metrics test CA")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    made = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    made.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    made.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    made.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return made


def _with_openssl(directory: Path) -> Certificates:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("neither the cryptography package nor the openssl command is available")
    made = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca_key, csr, extensions = directory / "ca.key", directory / "server.csr", directory / "server.ext"
    extensions.write_text(f"subjectAltName = IP:{LOOPBACK}\nbasicConstraints = critical, CA:FALSE\n"
                          "extendedKeyUsage = serverAuth\nauthorityKeyIdentifier = keyid\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for argv in (
        [openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(made.ca), "-days", "2",
         "-subj", "/CN=gateway-metrics test CA", "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
        [openssl, "req", *ec, "-keyout", str(made.key), "-out", str(csr), "-subj", f"/CN={LOOPBACK}"],
        [openssl, "x509", "-req", "-in", str(csr), "-CA", str(made.ca), "-CAkey", str(ca_key), "-CAcreateserial",
         "-out", str(made.cert), "-days", "2", "-sha256", "-extfile", str(extensions)],
    ):
        subprocess.run(argv, check=True, capture_output=True, timeout=30, cwd=directory)
    return made


# --- a Prometheus API that records its requests --------------------------------------------------


#: One sample, so every packed query of a summary gets an answer; ``vector(1)`` (the
#: readiness ping) gets its 1.
VECTOR = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {"provider": "alpha", "model": "m1"}, "value": [0, "7"]}]}}).encode()
ONE = json.dumps({"status": "success", "data": {"resultType": "vector", "result": [
    {"metric": {}, "value": [0, "1"]}]}}).encode()
NO_RULES = json.dumps({"status": "success", "data": {"groups": []}}).encode()


class _Served:
    """A loopback server run by a thread of its own, stopped on leaving ``with``."""

    _server: ThreadingHTTPServer
    _thread: threading.Thread

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with contextlib.suppress(OSError):
            self.stop()


class FakePrometheus(_Served):
    """``/api/v1/query`` answering one sample, ``/api/v1/rules`` answering no rules, on a
    free loopback port; over TLS with ``tls``. Every request that got through the TLS
    handshake is recorded, headers included."""

    def __init__(self, tls: Certificates | None = None) -> None:
        self.requests: list[SeenRequest] = []
        self.handshake_failures = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                seen = read_request(self)
                with fake._lock:
                    fake.requests.append(seen)
                query = seen.form.get("query")
                payload = NO_RULES if seen.path == "/api/v1/rules" else ONE if query == "vector(1)" else VECTOR
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def handle_error(self, request: Any, client_address: Any) -> None:
                with fake._lock:  # a client that refused our certificate: counted, not printed
                    fake.handshake_failures += 1

        self._server = Server((LOOPBACK, 0), Handler)
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            # The handshake happens in the handler's thread, on its first read: a client
            # that hangs in it holds up no other.
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
            scheme = "https"
        self.url = f"{scheme}://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="fake-prometheus")
        self._thread.start()

    def seen(self, path: str = "/api/v1/query") -> list[SeenRequest]:
        with self._lock:
            return [request for request in self.requests if request.path == path]

    def queries(self) -> list[str]:
        """The PromQL of every instant query received (``vector(1)`` is /ready's ping)."""
        return [request.form["query"] for request in self.seen() if request.form.get("query") != "vector(1)"]



# --- a probe target ---------------------------------------------------------------------------


class ProbeTarget(_Served):
    """A loopback HTTP server counting the requests to each path: ``/down/...`` answers
    503, anything else 200."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self._lock = threading.Lock()
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with target._lock:
                    target.hits[self.path] = target.hits.get(self.path, 0) + 1
                self.send_response(503 if self.path.startswith("/down") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name="probe-target")
        self._thread.start()

    def count(self, path: str) -> int:
        with self._lock:
            return self.hits.get(path, 0)

    def paths(self) -> set[str]:
        with self._lock:
            return set(self.hits)

