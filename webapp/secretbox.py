"""Encryption at rest for stored secrets (passwords, client secrets, private keys).

A MultiFernet over CASEMAIL_SECRET_KEYS: the first key encrypts, every key decrypts, so keys
can be rotated while the app keeps running.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import Flask, current_app


class SecretError(RuntimeError):
    """A stored secret cannot be decrypted with any configured key."""


class SecretBox:
    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, token: str) -> str:
        """Return the plaintext; raises SecretError when no key fits."""
        try:
            return self._fernet.decrypt(token.encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise SecretError(
                "a stored secret cannot be decrypted: was a key removed from CASEMAIL_SECRET_KEYS?"
            ) from None

    def rotate(self, token: str) -> str:
        """Re-encrypt `token` under the newest key."""
        try:
            return self._fernet.rotate(token.encode("ascii")).decode("ascii")
        except InvalidToken:
            raise SecretError(
                "a stored secret cannot be decrypted with any configured key"
            ) from None


def get_secretbox(app: Flask | None = None) -> SecretBox:
    app = app or current_app
    box = app.extensions.get("casemail.secretbox")
    if box is None:
        box = app.extensions["casemail.secretbox"] = SecretBox(app.config["CASEMAIL_SECRET_KEYS"])
    return box
