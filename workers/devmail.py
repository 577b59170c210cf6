"""The development mail sandbox: an SMTP server on 127.0.0.1 that accepts every message.

Every message is kept in a Maildir and shown on /dev/mailbox. Mail for an intake address
(CASEMAIL_DEV_INTAKE; plus-addressed variants too) is handed to the application's intake, the
same receive path that `flask mail ingest` uses for a mail server's pipe.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from webapp.extensions import db
from webapp.mail.sandbox import Sandbox, address_base
from webapp.services.intake import IntakeError, store_inbound

log = logging.getLogger(__name__)


class SandboxHandler:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.sandbox = Sandbox(app.config["CASEMAIL_DEV_MAILDIR"])
        self.intake = {address_base(a) for a in app.config["CASEMAIL_DEV_INTAKE"]}

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw: bytes = envelope.original_content or b""
        recipients = [str(r) for r in envelope.rcpt_tos]
        note = ""
        if any(address_base(r) in self.intake for r in recipients):
            with self.app.app_context():
                try:
                    inbound = store_inbound(raw, "devmail")
                    db.session.commit()
                    note = f"delivered to the application as inbound message #{inbound.id}"
                except IntakeError as exc:
                    db.session.rollback()
                    return f"554 5.6.0 {exc}"
                except SQLAlchemyError:
                    db.session.rollback()
                    log.exception("sandbox intake failed")
                    return "451 4.3.0 The application's intake is unavailable; try again later"
                finally:
                    db.session.remove()
        key = self.sandbox.add(raw, str(envelope.mail_from or ""), recipients, note)
        log.info("sandbox: kept %s for %s %s", key, ", ".join(recipients), note)
        return "250 2.0.0 Message accepted"


def build_controller(app: Flask, **kwargs: Any) -> Controller:
    return Controller(
        SandboxHandler(app),
        hostname=app.config["CASEMAIL_DEV_SMTP_HOST"],
        port=app.config["CASEMAIL_DEV_SMTP_PORT"],
        server_hostname="casemail-sandbox",
        decode_data=False,
        **kwargs,
    )


def run_devmail(app: Flask) -> None:
    """Serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    controller = build_controller(app)
    controller.start()
    print(
        f"Mail sandbox listening on {controller.hostname}:{controller.port}; "
        f"intake addresses: {', '.join(app.config['CASEMAIL_DEV_INTAKE'])}",
        flush=True,
    )
    try:
        stop.wait()
    finally:
        controller.stop()
