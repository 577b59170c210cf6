"""`flask mail ingest`: a mail server's pipe transport hands us one message on stdin."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sqlalchemy import select

from tests.fixtures.app import both_databases
from webapp.extensions import db
from webapp.models import InboundMessage

ROOT = Path(__file__).resolve().parents[2]
RAW = (
    b"From: =?utf-8?q?J=C3=BCrgen?= <jurgen@example.com>\r\n"
    b"To: support@casemail.test\r\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
    b"Message-ID: <abc@example.com>\r\n\r\nHallo\r\n"
)


@both_databases
def test_ingest_stores_the_raw_message(app, app_env):
    result = subprocess.run(
        [sys.executable, "-m", "flask", "mail", "ingest"],
        input=RAW,
        cwd=ROOT,
        env=app_env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().startswith("stored inbound message #")
    with app.app_context():
        message = db.session.scalar(select(InboundMessage))
        assert message.raw == RAW
        assert (message.subject, message.from_address, message.message_id) == (
            "Grüße",
            "jurgen@example.com",
            "<abc@example.com>",
        )


def test_ingest_refuses_empty_and_oversized_input_with_exit_65(runner, app):
    result = runner.invoke(args=["mail", "ingest"], input=b"")
    assert result.exit_code == 65
    assert "refused: the message is empty" in result.output
    result = runner.invoke(args=["mail", "ingest", "--max-size", "10"], input=RAW)
    assert result.exit_code == 65
    assert "more than the limit of 10" in result.output


def test_ingest_exits_75_when_the_database_is_unavailable(app_env, tmp_path):
    env = dict(app_env, DATABASE_URL=f"sqlite:///{tmp_path}/missing-dir/db.sqlite")
    result = subprocess.run(
        [sys.executable, "-m", "flask", "mail", "ingest"],
        input=RAW,
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 75, result.stderr.decode()
    assert "temporary failure" in result.stderr.decode()


def test_broken_headers_are_stored_not_lost(app, runner):
    raw = b"From: <<<broken\r\nSubject: =?x-unknown?q?abc?=\r\n\r\nbody\r\n"
    result = runner.invoke(args=["mail", "ingest"], input=raw)
    assert result.exit_code == 0, result.output
    with app.app_context():
        message = db.session.scalar(select(InboundMessage))
        assert message.raw == raw and message.from_address == ""
