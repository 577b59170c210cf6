"""The HTTP intake behind gunicorn, as mail servers reach it: bodies that end early, and bodies
sent in chunks, without a length, past the server's upload limit."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.support.inbound import make_route, message
from tests.support.ports import free_port
from webapp.extensions import db
from webapp.models import EmailListener, InboundMessage, User
from webapp.services.users import issue_api_token

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def server(app_env) -> Iterator[int]:
    """gunicorn serving the test app, with an upload limit of 1 MB; its port."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=dict(app_env, CASEMAIL_MAX_UPLOAD_MB="1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("gunicorn did not start") from None
                time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture
def post(app, make_user, make_account, make_case_type, server):
    """post(head, body, close=False) -> (status, JSON answer) of a POST of raw MIME to a
    listener (limit 10 MB), written on the socket as given; `close` half-closes it after."""
    user = make_user("admin", email="admin-api@example.com")
    listener_id = make_route(app, make_account(), make_case_type())
    with app.app_context():
        _, secret = issue_api_token(db.session.get(User, user.id), "mail server")
        db.session.get(EmailListener, listener_id).max_message_bytes = 10 * 1024 * 1024
        db.session.commit()

    def send(head: str, body: bytes, close: bool = False) -> tuple[int, dict]:
        request = (
            f"POST /api/v1/listeners/{listener_id}/messages HTTP/1.1\r\n"
            f"Host: 127.0.0.1\r\nAuthorization: Bearer {secret}\r\n"
            f"Content-Type: message/rfc822\r\nConnection: close\r\n{head}\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", server), timeout=30) as connection:
            connection.sendall(request + body)
            if close:
                connection.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        status_line, _, rest = answer.partition(b"\r\n")
        return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])

    return send


def stored(app) -> list[bytes]:
    with app.app_context():
        return [m.raw for m in db.session.scalars(select(InboundMessage))]


def test_a_body_that_ends_before_its_length_is_refused_and_nothing_is_stored(app, post):
    raw = message(body="Amount: 42.50\nCategory: Travel\n" + "an important line\n" * 50)
    status, answer = post(f"Content-Length: {len(raw)}\r\n", raw[: len(raw) // 2], close=True)
    assert status == 400
    assert answer["message"] == (
        f"The message ended after {len(raw) // 2} of the {len(raw)} bytes its Content-Length "
        "announced; nothing was stored. Send it again."
    )
    assert stored(app) == []
    # Sent again whole, it is stored whole.
    assert post(f"Content-Length: {len(raw)}\r\n", raw)[0] == 202
    assert stored(app) == [raw]


def test_a_chunked_body_is_stored_whole_and_one_past_the_upload_limit_is_refused(app, post):
    def chunked(raw: bytes) -> bytes:
        half = len(raw) // 2
        return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (raw[:half], raw[half:])) + (
            b"0\r\n\r\n"
        )

    small = message(message_id="<chunked@example.com>")
    assert post("Transfer-Encoding: chunked\r\n", chunked(small))[0] == 202
    head = message(message_id="<limit@example.com>", body="")
    at_limit = message(message_id="<limit@example.com>", body="x" * (1024 * 1024 - len(head)))
    assert len(at_limit) == 1024 * 1024  # the upload limit exactly: taken
    assert post("Transfer-Encoding: chunked\r\n", chunked(at_limit))[0] == 202
    big = message(message_id="<big@example.com>", body="x" * (2 * 1024 * 1024))
    status, answer = post("Transfer-Encoding: chunked\r\n", chunked(big))
    assert status == 413
    assert answer["message"] == (
        "The upload is larger than this server accepts: 1 MB (CASEMAIL_MAX_UPLOAD_MB)."
    )
    assert stored(app) == [small, at_limit]
