"""The SMTP session of the sender against a scripted aiosmtpd: what counts as temporary, what
as permanent, and how a batch uses its connection."""

from __future__ import annotations

import os
import smtplib
import socket
import threading
import time

import pytest

from tests.fixtures.smtp import _Controller, _RecordingSMTP, serve_scripted
from webapp.mail import sending
from webapp.mail.connect import Endpoint
from webapp.mail.hostpolicy import HostPolicy
from webapp.mail.sending import Keep, Outcome, SmtpPool, SmtpSession
from webapp.mail.smtp import SmtpLogin, envelope_address

RAW = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: Hi\r\n\r\nHello\r\n"
POLICY = HostPolicy.ALLOW_PRIVATE


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelined"])
def scripted_smtp(request, scripted_smtp):
    """Each test here against a server that offers PIPELINING and one that does not: the
    answers and what arrives are the same either way."""
    scripted_smtp.pipelining = request.param
    return scripted_smtp


def _session(port: int, login: SmtpLogin | None = None, keep: Keep | None = None) -> SmtpSession:
    endpoint = Endpoint("127.0.0.1", port, "none", "1.2", connect_timeout=5, read_timeout=5)
    return SmtpSession(endpoint, login, POLICY, keep=keep)


def _send_once(port: int, keep: Keep) -> None:
    with _session(port, keep=keep) as session:
        assert session.send("a@example.com", ["b@example.org"], RAW).outcome == Outcome.SENT


def test_one_connection_carries_the_batch(scripted_smtp):
    with _session(scripted_smtp.port) as session:
        deliveries = [session.send("a@example.com", ["b@example.org"], RAW) for _ in range(5)]
    assert {d.outcome for d in deliveries} == {Outcome.SENT}
    assert len(scripted_smtp.wait_for(5)) == 5
    assert scripted_smtp.connections == 1


def test_answers_at_data_decide_temporary_or_permanent(scripted_smtp):
    scripted_smtp.answer_next("451 4.7.1 Greylisted, try again")
    scripted_smtp.answer_next("554 5.7.1 Spam detected")
    with _session(scripted_smtp.port) as session:
        greylisted = session.send("a@example.com", ["b@example.org"], RAW)
        spam = session.send("a@example.com", ["b@example.org"], RAW)
        fine = session.send("a@example.com", ["b@example.org"], RAW)
    assert (greylisted.outcome, greylisted.answer) == (
        Outcome.RETRY,
        "451 4.7.1 Greylisted, try again.",
    )
    assert spam.outcome == Outcome.FAILED and spam.answer.startswith("554 5.7.1 Spam detected")
    assert fine.outcome == Outcome.SENT
    assert scripted_smtp.connections == 1


def test_all_recipients_refused_mixed_is_temporary(scripted_smtp):
    scripted_smtp.refuse_recipient("full@example.org", "452 4.2.2 Mailbox full")
    scripted_smtp.refuse_recipient("gone@example.org", "550 5.1.1 No such user")
    with _session(scripted_smtp.port) as session:
        mixed = session.send("a@example.com", ["full@example.org", "gone@example.org"], RAW)
        gone = session.send("a@example.com", ["gone@example.org"], RAW)
        fine = session.send("a@example.com", ["b@example.org"], RAW)
    assert mixed.outcome == Outcome.RETRY
    assert "full@example.org: 452 4.2.2 Mailbox full" in mixed.answer
    assert gone.outcome == Outcome.FAILED
    assert fine.outcome == Outcome.SENT, fine.answer
    assert scripted_smtp.connections == 1


def test_some_recipients_refused_the_others_get_the_message(scripted_smtp):
    scripted_smtp.refuse_recipient("gone@example.org", "550 5.1.1 No such user")
    with _session(scripted_smtp.port) as session:
        partly = session.send("a@example.com", ["gone@example.org", "b@example.org"], RAW)
    assert partly.outcome == Outcome.SENT
    assert partly.refused == {"gone@example.org": "550 5.1.1 No such user."}
    (message,) = scripted_smtp.wait_for(1)
    assert message.rcpt_tos == ["b@example.org"]


def test_a_refused_sender_fails_the_message_and_the_next_one_goes(scripted_smtp):
    scripted_smtp.refuse_next_sender("553 5.7.1 Sender address rejected")
    scripted_smtp.refuse_next_sender("451 4.3.0 Try later")
    with _session(scripted_smtp.port) as session:
        refused = session.send("a@example.com", ["b@example.org", "c@example.org"], RAW)
        later = session.send("a@example.com", ["b@example.org"], RAW)
        fine = session.send("a@example.com", ["b@example.org"], RAW)
    assert (refused.outcome, refused.answer) == (
        Outcome.FAILED,
        "553 5.7.1 Sender address rejected.",
    )
    assert later.outcome == Outcome.RETRY
    assert fine.outcome == Outcome.SENT, fine.answer
    (message,) = scripted_smtp.wait_for(1)
    assert message.raw == RAW
    assert scripted_smtp.connections == 1


def test_lines_that_start_with_a_period_arrive_as_written(scripted_smtp):
    raw = RAW + b".\r\n..two\r\n.hidden line\r\nno line end at the close"
    with _session(scripted_smtp.port) as session:
        assert session.send("a@example.com", ["b@example.org"], raw).outcome == Outcome.SENT
    (message,) = scripted_smtp.wait_for(1)
    assert message.raw == raw + b"\r\n"


_OFFERS_PIPELINING = b"250-test\r\n250-PIPELINING\r\n250 SIZE 10000000\r\n"
_HANG_UP = b"<hang up>"  # as a script's last answer: the server closes the connection instead


def _serve_script(
    listener: socket.socket, script: list[tuple[bytes, bytes]], received: list[tuple[bytes, int]]
) -> None:
    """Just enough of a server to see what a client writes: for each step, what arrives up to
    the step's end (with the number of reads it took) is recorded and answered."""
    connection, _ = listener.accept()
    with connection:
        connection.sendall(b"220 test ESMTP\r\n")
        for end, answer in script:
            data, reads = b"", 0
            while not data.endswith(end):
                chunk = connection.recv(65536)
                if not chunk:  # the client hung up early
                    return
                data += chunk
                reads += 1
            received.append((data, reads))
            if answer == _HANG_UP:
                return
            connection.sendall(answer)


def _send_to_script(
    script: list[tuple[bytes, bytes]], recipients: list[str], raw: bytes
) -> tuple[sending.Delivery, list[tuple[bytes, int]]]:
    received: list[tuple[bytes, int]] = []
    with socket.create_server(("127.0.0.1", 0)) as listener:
        server = threading.Thread(
            target=_serve_script, args=(listener, script, received), daemon=True
        )
        server.start()
        with _session(listener.getsockname()[1]) as session:
            delivery = session.send("a@example.com", recipients, raw)
        server.join(timeout=10)
    return delivery, received


def test_a_server_that_offers_pipelining_gets_the_envelope_in_one_write():
    """Two round trips a message, whatever the number of recipients, where smtplib alone
    waits for an answer after each command."""
    raw = RAW + b".dot\r\n"
    script = [
        (b"\r\n", _OFFERS_PIPELINING),
        (b"DATA\r\n", b"250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 No\r\n354 Go on\r\n"),
        (b"\r\n.\r\n", b"250 2.0.0 Queued\r\n"),
        (b"\r\n", b"221 Bye\r\n"),  # QUIT
    ]
    delivery, received = _send_to_script(script, ["b@example.org", "x@example.org"], raw)
    assert delivery.outcome == Outcome.SENT
    assert delivery.refused == {"x@example.org": "550 5.1.1 No."}
    envelope = (
        f"MAIL FROM:<a@example.com> SIZE={len(raw)}\r\n"
        "RCPT TO:<b@example.org>\r\nRCPT TO:<x@example.org>\r\nDATA\r\n"
    ).encode()
    assert received[1] == (envelope, 1)
    assert received[2][0] == RAW + b"..dot\r\n.\r\n"


def test_a_data_accepted_after_every_recipient_was_refused_carries_no_message():
    """A server should refuse DATA when it took no recipient (RFC 2920); one that accepts it
    gets an empty message, ended at once, and a reset, never the message itself."""
    script = [
        (b"\r\n", _OFFERS_PIPELINING),
        (b"DATA\r\n", b"250 2.1.0 OK\r\n550 5.1.1 No\r\n354 Go on\r\n"),
        (b".\r\n", b"554 5.5.1 No valid recipients\r\n"),
        (b"\r\n", b"250 2.0.0 OK\r\n"),  # RSET
        (b"\r\n", b"221 Bye\r\n"),  # QUIT
    ]
    delivery, received = _send_to_script(script, ["x@example.org"], RAW)
    assert (delivery.outcome, delivery.answer) == (
        Outcome.FAILED,
        "Every recipient was refused: x@example.org: 550 5.1.1 No.",
    )
    assert [data.upper() for data, _ in received[2:]] == [b".\r\n", b"RSET\r\n", b"QUIT\r\n"]


def test_an_unreachable_server_fails_every_message_at_once():
    with _session(1) as session:  # nothing listens on port 1
        first = session.send("a@example.com", ["b@example.org"], RAW)
        second = session.send("a@example.com", ["b@example.org"], RAW)
    assert first.outcome == Outcome.RETRY
    assert "127.0.0.1:1" in first.answer
    assert second is first  # no second connection attempt in the same batch


def test_failed_sign_in_is_temporary_with_the_servers_answer(smtp_server):
    server = smtp_server(auth={"sender": "right"})
    with _session(server.port, SmtpLogin(user="sender", password="wrong")) as session:
        delivery = session.send("a@example.com", ["b@example.org"], RAW)
    assert delivery.outcome == Outcome.RETRY
    assert delivery.answer.startswith("Sign-in as sender failed: 535")
    assert server.messages == []


def test_a_dropped_connection_is_opened_again_for_the_next_message(scripted_smtp):
    scripted_smtp.answer_next("421 4.3.2 Shutting down")
    with _session(scripted_smtp.port) as session:
        dropped = session.send("a@example.com", ["b@example.org"], RAW)
        after = session.send("a@example.com", ["b@example.org"], RAW)
    assert dropped.outcome == Outcome.RETRY and dropped.answer.startswith("421")
    assert after.outcome == Outcome.SENT
    assert scripted_smtp.connections == 2


ADDRESSES = [
    "a@example.com",
    "first.last+tag@mail.example.org",
    "o'brien@example.ie",
    "weird{}|~@example.com",
    '"quoted local"@example.com',  # not a dot-atom: smtplib's own quoting
    "Name <inside@example.com>",  # a display name: smtplib keeps only the address
    "a..b@example.com",  # not a dot-atom either
    "",  # the null sender of RFC 5321
]


@pytest.mark.parametrize("address", ADDRESSES)
def test_envelope_addresses_are_written_as_smtplib_writes_them(address):
    assert envelope_address(address) == smtplib.quoteaddr(address)


def test_the_server_gets_the_envelope_smtplib_would_send(scripted_smtp):
    recipients = ["first.last+tag@mail.example.org", "Name <inside@example.com>"]
    with _session(scripted_smtp.port) as session:
        delivery = session.send("bounces+x@example.com", recipients, RAW)
    assert delivery.outcome == Outcome.SENT
    (message,) = scripted_smtp.wait_for(1)
    assert message.mail_from == "bounces+x@example.com"
    assert message.rcpt_tos == ["first.last+tag@mail.example.org", "inside@example.com"]


def test_a_kept_connection_is_closed_after_its_time(scripted_smtp):
    keep = Keep("account", 0.6, SmtpPool())
    _send_once(scripted_smtp.port, keep)
    _send_once(scripted_smtp.port, keep)
    assert (scripted_smtp.connections, len(keep.pool)) == (1, 1)

    time.sleep(0.8)
    _send_once(scripted_smtp.port, keep)

    assert scripted_smtp.connections == 2


def test_a_connection_is_reused_for_a_limited_time_after_it_opened(scripted_smtp, monkeypatch):
    monkeypatch.setattr(sending, "REUSE_SECONDS", 1.0)
    keep = Keep("account", 30, SmtpPool())
    _send_once(scripted_smtp.port, keep)
    time.sleep(0.5)
    _send_once(scripted_smtp.port, keep)  # kept, though only for the 0.5 s left
    time.sleep(0.7)
    _send_once(scripted_smtp.port, keep)

    assert scripted_smtp.connections == 2


def test_a_batch_that_raised_does_not_keep_its_connection(scripted_smtp):
    keep = Keep("account", 30, SmtpPool())
    with pytest.raises(RuntimeError), _session(scripted_smtp.port, keep=keep) as session:
        session.send("a@example.com", ["b@example.org"], RAW)
        raise RuntimeError("the batch failed halfway")
    assert len(keep.pool) == 0
    _send_once(scripted_smtp.port, keep)
    assert scripted_smtp.connections == 2


def test_a_kept_oauth_connection_serves_only_its_token(smtp_server):
    server = smtp_server(require_auth=True, xoauth2_tokens={"sender": "token-1"})
    keep = Keep("account", 30, SmtpPool())

    def send_with(token: str) -> sending.Delivery:
        login = SmtpLogin(user="sender", oauth_token=token)
        with _session(server.port, login, keep) as session:
            return session.send("a@example.com", ["b@example.org"], RAW)

    assert send_with("token-1").outcome == Outcome.SENT
    assert send_with("token-1").outcome == Outcome.SENT
    assert server.auth_mechanisms_used == ["XOAUTH2"]  # the second batch reused the connection

    # Another token (refreshed, or of a changed profile) signs in anew: here the server refuses
    # it, which the batch must hear rather than send over the old token's connection.
    other = send_with("token-2")
    assert other.outcome == Outcome.RETRY
    assert other.answer.startswith("Sign-in as sender failed")
    assert server.auth_mechanisms_used == ["XOAUTH2", "XOAUTH2"]

    assert send_with("token-1").outcome == Outcome.SENT  # still kept for its own token
    assert server.auth_mechanisms_used == ["XOAUTH2", "XOAUTH2"]
    assert len(server.wait_for(3)) == 3


def test_the_pool_keeps_a_bounded_number_of_connections(scripted_smtp, monkeypatch):
    monkeypatch.setattr(sending, "MAX_KEPT", 3)
    pool = SmtpPool()
    for owner in range(5):
        _send_once(scripted_smtp.port, Keep(owner, 30 + owner, pool))
    assert len(pool) == 3
    # The ones due to expire soonest went first: the last three accounts still have theirs.
    for owner in (2, 3, 4):
        _send_once(scripted_smtp.port, Keep(owner, 30, pool))
    assert scripted_smtp.connections == 5


def test_a_forked_child_leaves_the_parents_connections_alone(scripted_smtp):
    keep = Keep("account", 30, sending.SMTP_POOL)
    _send_once(scripted_smtp.port, keep)
    assert len(sending.SMTP_POOL) == 1

    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        kept = len(sending.SMTP_POOL)
        sending.SMTP_POOL.clear()  # would say QUIT on the parent's session if it were kept
        os._exit(kept)
    _, status = os.waitpid(child, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    _send_once(scripted_smtp.port, keep)
    assert scripted_smtp.connections == 1


class _RefusesData(_RecordingSMTP):
    """Refuses the DATA command itself, as a server does when it is busy, and keeps the
    transaction open, as RFC 5321 has it: the client must RSET before its next MAIL."""

    refusals = 0

    async def smtp_DATA(self, arg: str) -> None:
        if _RefusesData.refusals:
            _RefusesData.refusals -= 1
            await self.push("451 4.3.0 Not now")
            return
        await super().smtp_DATA(arg)


class _RefusingController(_Controller):
    def factory(self) -> _RecordingSMTP:
        return _RefusesData(self.handler, xoauth2_tokens={}, require_auth=False)


@pytest.fixture(params=[False, True], ids=["one-command-at-a-time", "pipelined"])
def refusing_smtp(request):
    with serve_scripted(_RefusingController) as handler:
        handler.pipelining = request.param
        yield handler


def test_a_refusal_at_data_leaves_the_connection_ready_for_the_next_message(refusing_smtp):
    keep = Keep("account", 30, SmtpPool())
    _RefusesData.refusals = 1
    with _session(refusing_smtp.port, keep=keep) as session:
        refused = session.send("a@example.com", ["b@example.org"], RAW)
        after = session.send("a@example.com", ["b@example.org"], RAW)
    assert (refused.outcome, refused.answer) == (Outcome.RETRY, "451 4.3.0 Not now.")
    assert after.outcome == Outcome.SENT, after.answer

    _RefusesData.refusals = 1
    with _session(refusing_smtp.port, keep=keep) as session:
        assert session.send("a@example.com", ["b@example.org"], RAW).outcome == Outcome.RETRY
    with _session(refusing_smtp.port, keep=keep) as session:  # the next job, kept connection
        assert session.send("a@example.com", ["b@example.org"], RAW).outcome == Outcome.SENT
    assert refusing_smtp.connections == 1


@pytest.mark.parametrize(
    ("refusal", "recipients", "failed"),
    [
        (b"554 5.7.1 Blocked\r\n", ["b@example.org"], "554 5.7.1 Blocked."),
        (
            b"250 2.1.0 OK\r\n550 5.1.1 No\r\n",
            ["x@example.org"],
            "Every recipient was refused: x@example.org: 550 5.1.1 No.",
        ),
    ],
    ids=["sender", "every-recipient"],
)
def test_a_refusal_stays_a_refusal_when_the_server_hangs_up_after_it(refusal, recipients, failed):
    """A server may close the connection right after refusing a pipelined message, before it
    answers the commands sent with it: the message has failed for good all the same."""
    script = [(b"\r\n", _OFFERS_PIPELINING), (b"DATA\r\n", refusal), (b"", _HANG_UP)]
    delivery, _ = _send_to_script(script, recipients, RAW)
    assert (delivery.outcome, delivery.answer) == (Outcome.FAILED, failed)
