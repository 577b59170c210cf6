"""Settings from the environment (12-factor), with embedded defaults for a single machine.

Every variable is documented in docs/operations.md.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.fernet import Fernet

from webapp.mail.hostpolicy import HostRefused, parse_policy

ENVIRONMENTS = ("development", "production", "testing")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and what to do."""


def normalise_database_url(url: str) -> str:
    """Map the URL schemes people paste (postgres://, postgresql://) to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _read_or_create(path: Path, make: Any) -> str:
    """Return the content of `path`, creating it with `make()` (mode 0600) when missing."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    value: str = make()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def _flag(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"expected a yes/no value, got {value!r}")


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None


def _not_negative(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 0:
        raise ConfigError(f"{name} must be 0 or more, got {value}")
    return value


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    value = _int(env, name, default)
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def _base_url(value: str) -> str:
    """`value` without a trailing slash; raises ConfigError unless it is an http(s) address
    with a host and no query, fragment, user name or white space."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or "@" in parts.netloc
        or any(ch.isspace() or ord(ch) < 32 for ch in value)
    ):
        raise ConfigError(
            "CASEMAIL_BASE_URL must be the http:// or https:// address people use to reach "
            f"Casemail, such as https://casemail.example.com; got {value[:100]!r}"
        )
    return value.rstrip("/")


def load_config(env: Mapping[str, str], instance_path: str) -> dict[str, Any]:
    """Build the Flask config from environment variables.

    Raises ConfigError when a production setting is missing or a value is malformed.
    """
    instance = Path(instance_path)
    mode = env.get("CASEMAIL_ENV", "development").strip().lower()
    if mode not in ENVIRONMENTS:
        raise ConfigError(f"CASEMAIL_ENV must be one of {', '.join(ENVIRONMENTS)}, got {mode!r}")
    production = mode == "production"

    secret_key = env.get("SECRET_KEY", "")
    secret_keys = [k.strip() for k in env.get("CASEMAIL_SECRET_KEYS", "").split(",") if k.strip()]
    if production:
        missing = [
            name
            for name, value in (("SECRET_KEY", secret_key), ("CASEMAIL_SECRET_KEYS", secret_keys))
            if not value
        ]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} must be set when CASEMAIL_ENV=production "
                "(see docs/operations.md, 'Secrets')"
            )
    else:
        # Development keeps generated keys in instance/ so that sessions and stored secrets
        # survive restarts; production must bring its own.
        if not secret_key:
            secret_key = _read_or_create(instance / "secret_key", lambda: secrets.token_hex(32))
        if not secret_keys:
            secret_keys = [
                _read_or_create(
                    instance / "secret_keys", lambda: Fernet.generate_key().decode("ascii")
                )
            ]
    for key in secret_keys:
        try:
            Fernet(key.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            raise ConfigError(
                "CASEMAIL_SECRET_KEYS holds a value that is not a Fernet key "
                "(32 url-safe base64-encoded bytes; make one with "
                "`flask secrets generate-key`)"
            ) from None

    base_url = env.get("CASEMAIL_BASE_URL", "").strip()
    if production and not base_url:
        raise ConfigError(
            "CASEMAIL_BASE_URL must be set when CASEMAIL_ENV=production: the links in approval "
            "requests and notifications point there (such as https://casemail.example.com)"
        )
    # Unset, links point at the port `make run` serves on.
    port = _int(env, "CASEMAIL_PORT", 5000)
    if not 0 < port < 65536:
        raise ConfigError(f"CASEMAIL_PORT must be a port number (1-65535), got {port}")
    base_url = _base_url(base_url or f"http://127.0.0.1:{port}")

    try:
        host_policy = parse_policy(env.get("CASEMAIL_MAIL_HOST_POLICY"))
    except HostRefused as exc:
        raise ConfigError(str(exc)) from None

    database_url = env.get("DATABASE_URL") or f"sqlite:///{instance / 'casemail.db'}"
    cookie_secure = _flag(env.get("CASEMAIL_COOKIE_SECURE"), default=production)

    return {
        "CASEMAIL_ENV": mode,
        "DEBUG": False,
        "TESTING": mode == "testing",
        "SECRET_KEY": secret_key,
        "CASEMAIL_SECRET_KEYS": secret_keys,
        "SQLALCHEMY_DATABASE_URI": normalise_database_url(database_url),
        "SQLALCHEMY_ENGINE_OPTIONS": {"pool_pre_ping": True},
        "REDIS_URL": env.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "CASEMAIL_BASE_URL": base_url,
        "CASEMAIL_MESSAGE_ID_DOMAIN": env.get("CASEMAIL_MESSAGE_ID_DOMAIN", "casemail.local"),
        "CASEMAIL_MAIL_HOST_POLICY": host_policy,
        "CASEMAIL_DEV_SANDBOX": _flag(env.get("CASEMAIL_DEV_SANDBOX"), default=not production),
        "CASEMAIL_DEV_SMTP_HOST": env.get("CASEMAIL_DEV_SMTP_HOST", "127.0.0.1"),
        "CASEMAIL_DEV_SMTP_PORT": _int(env, "CASEMAIL_DEV_SMTP_PORT", 8025),
        "CASEMAIL_DEV_MAILDIR": env.get("CASEMAIL_DEV_MAILDIR", str(instance / "devmail")),
        "CASEMAIL_DEV_INTAKE": [
            a.strip().lower()
            for a in env.get("CASEMAIL_DEV_INTAKE", "support@casemail.test").split(",")
            if a.strip()
        ],
        "CASEMAIL_APPROVAL_TOKEN_DAYS": _positive(env, "CASEMAIL_APPROVAL_TOKEN_DAYS", 14),
        # A file of "selector._domainkey.domain TXT-value" lines: DKIM keys that replies are
        # checked against before DNS is asked (closed networks, tests).
        "CASEMAIL_DKIM_KEYS": env.get("CASEMAIL_DKIM_KEYS", "").strip(),
        "CASEMAIL_RATE_LIMIT_PER_RECIPIENT": _int(env, "CASEMAIL_RATE_LIMIT_PER_RECIPIENT", 30),
        "CASEMAIL_RATE_LIMIT_PER_CASE": _int(env, "CASEMAIL_RATE_LIMIT_PER_CASE", 60),
        "CASEMAIL_SMTP_KEEP_SECONDS": _not_negative(env, "CASEMAIL_SMTP_KEEP_SECONDS", 30),
        "CASEMAIL_LOGIN_MAX_FAILURES": _int(env, "CASEMAIL_LOGIN_MAX_FAILURES", 10),
        "CASEMAIL_LOGIN_LOCK_SECONDS": _int(env, "CASEMAIL_LOGIN_LOCK_SECONDS", 900),
        "CASEMAIL_LOG_LEVEL": env.get("CASEMAIL_LOG_LEVEL", "INFO").upper(),
        "SESSION_COOKIE_NAME": "casemail_session",
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_SECURE": cookie_secure,
        "REMEMBER_COOKIE_HTTPONLY": True,
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SECURE": cookie_secure,
        "PERMANENT_SESSION_LIFETIME": _int(env, "CASEMAIL_SESSION_HOURS", 12) * 3600,
        "WTF_CSRF_TIME_LIMIT": None,
        "MAX_CONTENT_LENGTH": _int(env, "CASEMAIL_MAX_UPLOAD_MB", 50) * 1024 * 1024,
        "BOOTSTRAP_SERVE_LOCAL": True,
        "BOOTSTRAP_BTN_STYLE": "primary",
        "BOOTSTRAP_BTN_SIZE": "md",
    }
