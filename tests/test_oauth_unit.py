"""The client assertion and key handling: pure, no server."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from lambda_analytics import Analytics, ConfigurationError, OAuthSettings, RetryPolicy
from lambda_analytics.oauth import (
    ASSERTION_LIFETIME,
    TokenSource,
    build_assertion,
    load_private_key,
)
from lambda_analytics.transport import Urllib3Transport


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = pem(KEY)


def test_assertion_header_and_claims() -> None:
    token = build_assertion(
        load_private_key(PEM),
        client_id="client-1",
        key_id="kid-1",
        audience="https://oauth2.segment.io",
        now=1_800_000_000.7,
        jti="jti-1",
    )
    assert jwt.get_unverified_header(token) == {"alg": "RS256", "typ": "JWT", "kid": "kid-1"}
    claims = jwt.decode(
        token,
        KEY.public_key(),
        algorithms=["RS256"],
        audience="https://oauth2.segment.io",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == {
        "iss": "client-1",
        "sub": "client-1",
        "aud": "https://oauth2.segment.io",
        "iat": 1_800_000_000,
        "exp": 1_800_000_000 + ASSERTION_LIFETIME,
        "jti": "jti-1",
    }
    assert claims["exp"] - claims["iat"] < 60


def test_two_assertions_never_share_a_jti_and_audience_has_no_trailing_slash() -> None:
    source = TokenSource(
        OAuthSettings("c", "k", PEM, auth_server="https://auth.example/"),
        region="us",
        transport=Urllib3Transport(),
        retry=RetryPolicy(),
    )
    assert source.audience == "https://auth.example" and source.token_url.endswith("/token")
    ids = {
        jwt.decode(source._assertion(), options={"verify_signature": False})["jti"]
        for _ in range(50)
    }
    assert len(ids) == 50


def test_region_chooses_the_auth_server() -> None:
    settings = OAuthSettings("c", "k", PEM)
    eu = Analytics("wk", region="eu", oauth=settings)
    assert (
        eu._engine.route.tokens is not None
        and eu._engine.route.tokens.audience == "https://oauth2.eu1.segmentapis.com"
    )
    us = Analytics("wk", oauth=settings)
    assert (
        us._engine.route.tokens is not None
        and us._engine.route.tokens.audience == "https://oauth2.segment.io"
    )


def test_bad_keys_are_configuration_errors_that_do_not_quote_the_key() -> None:
    with pytest.raises(ConfigurationError, match=r"oauth\.private_key") as caught:
        load_private_key(
            "-----BEGIN PRIVATE KEY-----\nnot-a-key-SECRETBITS\n-----END PRIVATE KEY-----\n"
        )
    assert "SECRETBITS" not in str(caught.value)
    with pytest.raises(ConfigurationError, match="RSA"):
        load_private_key(pem(ec.generate_private_key(ec.SECP256R1())))


def test_settings_repr_hides_the_private_key() -> None:
    text = repr(OAuthSettings("c", "k", PEM))
    assert "PRIVATE" not in text and "<redacted>" in text
    assert PEM not in repr(Analytics("wk", oauth=OAuthSettings("c", "k", PEM)))


def test_pyjwt_and_cryptography_load_only_with_oauth() -> None:
    script = textwrap.dedent(
        """
        import sys
        import lambda_analytics
        heavy = lambda: sorted(m for m in ("jwt", "cryptography") if m in sys.modules)
        assert heavy() == [], heavy()
        lambda_analytics.Analytics("wk", flush_at=5).track(user_id="u", event="x")
        assert heavy() == [], heavy()
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.stdout.strip() == "ok", result.stderr
