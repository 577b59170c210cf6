"""The development mail sandbox: an SMTP server on 127.0.0.1 that accepts every message.

Every message is kept in a Maildir and shown on /dev/mailbox. Mail for an intake address
(CASEMAIL_DEV_INTAKE; plus-addressed variants too, such as the Reply-To of an approval request)
is handed to the application's intake, the same receive path that `flask mail ingest` uses for a
mail server's pipe: when a listener's account sends from that address, the message is stored
for that listener and ingested at once by the worker; otherwise it is only stored.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from webapp.extensions import db
from webapp.mail.sandbox import Sandbox, address_base
from webapp.models import EmailAccount, EmailListener
from webapp.services.intake import IntakeError, store_for_listener, store_inbound
from webapp.services.receiving import enqueue_ingest

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
        intake = [address_base(r) for r in recipients if address_base(r) in self.intake]
        if intake:
            with self.app.app_context():
                try:
                    listener = listener_for(intake)
                    if listener is None:
                        inbound = store_inbound(raw, "devmail")
                    else:
                        inbound = store_for_listener(raw, "devmail", listener)
                    db.session.commit()
                    note = f"delivered to the application as inbound message #{inbound.id}"
                    if listener is not None:
                        note += f" for the listener {listener.name}"
                        enqueue_ingest([inbound.id])
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


def listener_for(addresses: list[str]) -> EmailListener | None:
    """The listener of the first of `addresses` (plain, lower case) that a listener's account
    sends from; enabled listeners first.

    The sandbox delivers to a listener whether or not it is enabled: a disabled listener is
    one the scheduler does not poll, which is what a listener fed by the sandbox wants.
    """
    for address in addresses:
        listener = db.session.scalar(
            select(EmailListener)
            .join(EmailAccount, EmailListener.account_id == EmailAccount.id)
            .where(func.lower(EmailAccount.smtp_email) == address)
            .order_by(EmailListener.enabled.desc(), EmailListener.id)
            .limit(1)
        )
        if listener is not None:
            return listener
    return None


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
