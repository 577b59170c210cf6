"""OAuth 2.0 access tokens for mail: Microsoft identity (through msal) and Google JWT bearer.

Requests to the authority trust only the operator's chosen CA bundle (or requests' bundled
public CAs) and ignore proxy and CA variables of the environment (trust_env=False), so that a
machine-wide REQUESTS_CA_BUNDLE never decides whom Casemail trusts with a client secret.
Every connection they open checks the address it is about to reach against the host policy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlsplit

import msal
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError

from webapp.mail.hostpolicy import HostPolicy, HostRefused, resolve

GRANTS = ("client_credentials", "password", "jwt_bearer")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# A token is renewed this long before it expires, so that no connection starts with a token
# that runs out half-way.
REFRESH_MARGIN = 300
HTTP_TIMEOUT = 20


class OAuthError(Exception):
    """A token could not be obtained; the message is one sentence for the user."""


@dataclass(frozen=True)
class OAuthSettings:
    grant: str
    authority: str
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scopes: tuple[str, ...] = ()
    username: str = ""
    password: str = field(default="", repr=False)
    service_account_json: str = field(default="", repr=False)
    subject: str = ""
    ca_bundle_pem: str | None = None

    def cache_key(self) -> str:
        # Every field decides the token, so that a changed secret or truststore is tried at
        # once rather than hidden behind a token obtained with the old one. Hashed: the key
        # holds no secret.
        return hashlib.sha256(json.dumps(astuple(self)).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_at: float


class TokenCache:
    """Tokens by profile, renewed REFRESH_MARGIN seconds before they expire."""

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> Token | None:
        with self._lock:
            token = self._tokens.get(key)
        if token is None or token.expires_at - REFRESH_MARGIN <= now:
            return None
        return token

    def put(self, key: str, token: Token) -> None:
        with self._lock:
            self._tokens[key] = token

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


token_cache = TokenCache()


class _CheckedConnection(HTTPSConnection):
    """urllib3's HTTPS connection, reaching only addresses that the host policy allows.

    The check runs on the addresses resolved for this very connection, so neither a DNS answer
    that changed since the URL was checked, nor a redirect, nor the token endpoint an authority
    names can lead to an address the policy refuses.
    """

    policy: ClassVar[HostPolicy]

    def _new_conn(self) -> socket.socket:
        name = self._dns_host
        try:
            addresses = resolve(name, self.port, self.policy)
        except socket.gaierror as exc:
            raise NameResolutionError(self.host, self, exc) from exc
        last: NewConnectionError | None = None
        for address in addresses:
            self._dns_host = address
            try:
                return super()._new_conn()
            except NewConnectionError as exc:
                last = exc
            finally:
                self._dns_host = name
        assert last is not None
        raise last


def _checked_pool(policy: HostPolicy) -> type[HTTPSConnectionPool]:
    connection = type("CheckedHTTPSConnection", (_CheckedConnection,), {"policy": policy})
    return type("CheckedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": connection})


_CHECKED_POOLS = {policy: _checked_pool(policy) for policy in HostPolicy}


class _CheckedAdapter(HTTPAdapter):
    def __init__(self, policy: HostPolicy) -> None:
        self._pool = _CHECKED_POOLS[policy]
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"https": self._pool}

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        # msal passes no timeout to a session it is given; an authority that never answers
        # must not hold a request (and the page waiting on it) for ever.
        return super().send(
            request,
            stream=stream,
            timeout=HTTP_TIMEOUT if timeout is None else timeout,
            verify=verify,
            cert=cert,
            proxies=proxies,
        )


@contextmanager
def http_session(settings: OAuthSettings, policy: HostPolicy) -> Iterator[requests.Session]:
    """A requests session for the authority and Graph: https only, each connection checked
    against `policy`; a refused address raises HostRefused from the request."""
    session = requests.Session()
    session.trust_env = False
    # Without an adapter for http://, a redirect to plain HTTP fails instead of leaving TLS.
    session.adapters.clear()
    session.mount("https://", _CheckedAdapter(policy))
    path = None
    try:
        if settings.ca_bundle_pem:
            # requests takes a CA bundle only as a file name.
            handle, path = tempfile.mkstemp(suffix=".pem")
            with os.fdopen(handle, "w") as fh:
                fh.write(settings.ca_bundle_pem)
            session.verify = path
        yield session
    finally:
        session.close()
        if path:
            os.unlink(path)


def check_url(url: str, policy: HostPolicy) -> None:
    """Raises OAuthError unless `url` is an https URL whose host the policy allows."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise OAuthError(f"The URL {url} must start with https:// and name a host.")
    try:
        resolve(parts.hostname, parts.port or 443, policy)
    except HostRefused as exc:
        raise OAuthError(str(exc)) from None
    except OSError:
        raise OAuthError(f"DNS name not found: {parts.hostname} does not resolve.") from None


def _failure(result: dict[str, Any]) -> OAuthError:
    code = result.get("error", "unknown_error")
    description = " ".join(str(result.get("error_description", "")).split())
    first = description.split(". ")[0].rstrip(".")
    detail = f": {first}" if first else ""
    return OAuthError(f"OAuth token request failed ({code}){detail}.")


def _msal_token(settings: OAuthSettings, session: requests.Session) -> dict[str, Any]:
    app = msal.ConfidentialClientApplication(
        settings.client_id,
        client_credential=settings.client_secret,
        authority=settings.authority,
        http_client=session,
        validate_authority=False,
        instance_discovery=False,
        token_cache=msal.TokenCache(),
    )
    scopes = list(settings.scopes)
    if settings.grant == "client_credentials":
        return app.acquire_token_for_client(scopes=scopes)
    return app.acquire_token_by_username_password(settings.username, settings.password, scopes)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def google_assertion(settings: OAuthSettings, now: float) -> tuple[str, str]:
    """The signed JWT (RS256) of a Google service account and the token URL it is for.

    Raises OAuthError when the service-account key is not usable.
    """
    try:
        key_info = json.loads(settings.service_account_json)
        key = serialization.load_pem_private_key(key_info["private_key"].encode(), None)
        issuer = key_info["client_email"]
    except (ValueError, KeyError, TypeError):
        raise OAuthError(
            "The service-account key is not a Google key file (JSON with client_email and "
            "private_key)."
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise OAuthError("The service-account key must be an RSA key.")
    audience = settings.authority
    header = {"alg": "RS256", "typ": "JWT", "kid": key_info.get("private_key_id", "")}
    claims = {
        "iss": issuer,
        "scope": " ".join(settings.scopes),
        "aud": audience,
        "iat": int(now),
        "exp": int(now) + 3600,
    }
    if settings.subject:
        claims["sub"] = settings.subject
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = key.sign(signing_input.encode("ascii"), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}", audience


def _google_token(settings: OAuthSettings, session: requests.Session) -> dict[str, Any]:
    assertion, token_url = google_assertion(settings, time.time())
    response = session.post(
        token_url,
        data={"grant_type": JWT_BEARER, "assertion": assertion},
        timeout=HTTP_TIMEOUT,
    )
    try:
        body: dict[str, Any] = response.json()
    except ValueError:
        body = {"error": f"http_{response.status_code}"}
    return body


def fetch_token(settings: OAuthSettings, policy: HostPolicy, now: float | None = None) -> Token:
    """A valid access token, from the cache or from the authority.

    Raises OAuthError with the provider's error code when the request fails.
    """
    now = time.time() if now is None else now
    cached = token_cache.get(settings.cache_key(), now)
    if cached is not None:
        return cached
    if settings.grant not in GRANTS:
        raise OAuthError(f"Unknown grant {settings.grant!r}.")
    check_url(settings.authority, policy)
    try:
        with http_session(settings, policy) as session:
            if settings.grant == "jwt_bearer":
                result = _google_token(settings, session)
            else:
                result = _msal_token(settings, session)
    except HostRefused as exc:
        raise OAuthError(f"OAuth token request failed: {exc}") from None
    except requests.Timeout:
        raise OAuthError(
            f"OAuth token request failed: {urlsplit(settings.authority).hostname} did not "
            f"answer within {HTTP_TIMEOUT} seconds."
        ) from None
    except requests.exceptions.SSLError:
        raise OAuthError(
            "OAuth token request failed: the certificate of "
            f"{urlsplit(settings.authority).hostname} is not trusted."
        ) from None
    except (requests.RequestException, ValueError) as exc:
        raise OAuthError(f"OAuth token request failed: {type(exc).__name__}.") from None
    if "access_token" not in result:
        raise _failure(result)
    token = Token(result["access_token"], now + float(result.get("expires_in", 3600)))
    token_cache.put(settings.cache_key(), token)
    return token
