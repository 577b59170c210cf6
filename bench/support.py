"""What the benchmarks share: a throwaway instance's settings and the mailbox account."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from tests.fixtures.dovecot import DovecotServer
from webapp.models import EmailAccount
from webapp.services.accounts import save_account


def use_throwaway_instance(folder: Path, **settings: str) -> None:
    """Point this process, and the workers it starts, at a new instance kept in `folder`."""
    os.environ.update(
        CASEMAIL_ENV="development",
        CASEMAIL_INSTANCE_PATH=str(folder / "instance"),
        SECRET_KEY=secrets.token_hex(16),
        CASEMAIL_SECRET_KEYS=Fernet.generate_key().decode(),
        CASEMAIL_MAIL_HOST_POLICY="allow-private",
        CASEMAIL_LOG_LEVEL="WARNING",
        **settings,
    )


def save_mailbox_account(
    address: str,
    server: DovecotServer,
    user: str,
    password: str,
    *,
    smtp_host: str = "127.0.0.1",
    smtp_port: int = 25,
) -> EmailAccount:
    """The account "bench": sends as `address` over plain SMTP, receives from Dovecot's IMAP."""
    values: dict[str, Any] = {
        "name": "Bench mailbox",
        "smtp_email": address,
        "smtp_user_id": address,
        "smtp_auth": "none",
        "smtp_host": smtp_host,
        "smtp_port": smtp_port,
        "smtp_security": "none",
        "receiver_protocol": "imap",
        "receiver_host": server.host,
        "receiver_port": server.imap_port,
        "receiver_security": "none",
        "receiver_use_sender_credentials": False,
        "receiver_user_id": user,
    }
    return save_account(
        None, "bench", values, {"smtp_password": None, "receiver_password": password}
    )
