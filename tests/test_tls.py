"""TLS certificate verification is on by default, and only the documented switches change that.

An HTTPS ``/v1/batch`` server on 127.0.0.1 presents a self-signed certificate made at test time
(``cryptography``).  The default client refuses it, before any batch is sent; ``ca_certs=``
naming that certificate makes it trusted; ``verify=False`` turns verification off, explicitly.
A certificate for another host name is refused even when its CA is trusted.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer

from lambda_analytics import Analytics, RetryPolicy, TransportError

NO_RETRY = RetryPolicy(max_retries=0)


def self_signed(directory: Path, names: list[str], ips: list[str]) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``names`` and ``ips``: (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0] if names else ips[0])])
    now = dt.datetime.now(dt.timezone.utc)
    alternative = [x509.DNSName(n) for n in names] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips
    ]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternative), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


Serve = Callable[..., tuple[FaultServer, Path]]


@pytest.fixture
def https(tmp_path: Path) -> Iterator[Serve]:
    servers: list[FaultServer] = []

    def serve(names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)):
        cert, key = self_signed(tmp_path, list(names), list(ips))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server = FaultServer(ssl_context=context, max_lifetime=30).start()
        servers.append(server)
        return server, cert

    yield serve
    for server in servers:
        server.stop()


def wait_for(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_default_client_refuses_a_self_signed_certificate(https: Serve) -> None:
    server, _ = https()
    analytics = Analytics("k", host=server.url, retry=NO_RETRY)
    result = analytics.track(user_id="u", event="e")
    assert isinstance(result.error, TransportError) and not result.delivered
    assert "certificate verify failed" in str(result.error).lower()
    assert wait_for(lambda: server.tls_failures >= 1)  # the handshake failed on both ends
    assert server.requests == 0 and not server.accepted  # no batch reached the server


def test_a_refused_certificate_is_retried_then_reported(https: Serve) -> None:
    server, _ = https()
    failures: list[str] = []
    analytics = Analytics(
        "k",
        host=server.url,
        retry=RetryPolicy(max_retries=2, backoff_initial=0.001),
        on_error=lambda error, messages: failures.append(str(error)),
    )
    result = analytics.track(user_id="u", event="e")
    assert isinstance(result.error, TransportError) and len(failures) == 1
    assert wait_for(lambda: server.tls_failures == 3)  # every attempt refused the certificate
    assert server.requests == 0


def test_ca_certs_naming_the_certificate_makes_it_trusted(https: Serve) -> None:
    server, cert = https()
    analytics = Analytics("k", host=server.url, ca_certs=str(cert), retry=NO_RETRY)
    result = analytics.track(user_id="u", event="e")
    assert result.delivered, result.error
    assert server.accepted == {result.message_id: 1}
    by_name = Analytics("k", host=server.url.replace("127.0.0.1", "localhost"), ca_certs=str(cert))
    assert by_name.track(user_id="u", event="e").delivered  # the DNS name in the SAN works too


def test_a_trusted_certificate_for_another_host_is_refused(https: Serve) -> None:
    server, cert = https(names=("analytics.example.test",), ips=())
    analytics = Analytics("k", host=server.url, ca_certs=str(cert), retry=NO_RETRY)
    result = analytics.track(user_id="u", event="e")
    assert isinstance(result.error, TransportError)
    # The name is checked too: "IP address mismatch" (urllib3 2) or "doesn't match" (1.26).
    assert "mismatch" in str(result.error) or "doesn't match" in str(result.error)
    assert server.requests == 0


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_false_is_the_explicit_switch_that_turns_it_off(https: Serve) -> None:
    server, _ = https()
    analytics = Analytics("k", host=server.url, verify=False, retry=NO_RETRY)
    result = analytics.track(user_id="u", event="e")
    assert result.delivered, result.error
    assert server.accepted == {result.message_id: 1}


def test_verification_can_be_turned_off_from_the_environment_only_explicitly(
    https: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lambda_analytics

    server, cert = https()
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
    monkeypatch.setenv("ANALYTICS_WRITE_KEY", "k")
    monkeypatch.setenv("ANALYTICS_HOST", server.url)
    monkeypatch.setenv("ANALYTICS_MAX_RETRIES", "0")
    assert isinstance(lambda_analytics.track(user_id="u", event="e").error, TransportError)
    monkeypatch.setenv("ANALYTICS_CA_CERTS", str(cert))
    assert lambda_analytics.configure().track(user_id="u", event="e").delivered
    lambda_analytics.close()
    monkeypatch.setattr(lambda_analytics.default, "_client", None)
