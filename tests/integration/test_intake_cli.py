"""`flask mail ingest`: a mail server's pipe transport hands us one message on stdin; and
`flask listeners run`, which fetches a listener's mail now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.fixtures.app import both_databases
from tests.support.inbound import make_route
from tests.support.ports import free_port
from webapp import create_app
from webapp.extensions import db
from webapp.models import EmailListener, InboundMessage

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


def test_ingest_with_standard_input_closed_says_so_and_exits_65(app, app_env):
    # As a pipe transport misconfigured to close it would start the command (`<&-`).
    result = subprocess.run(
        [sys.executable, "-m", "flask", "mail", "ingest"],
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env=app_env,
        capture_output=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),
    )
    assert result.returncode == 65, result.stderr.decode()
    assert result.stderr.decode() == "refused: there is no message: standard input is closed\n"
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(InboundMessage)) == 0


def test_ingest_refuses_empty_and_oversized_input_with_exit_65(runner, app):
    result = runner.invoke(args=["mail", "ingest"], input=b"")
    assert result.exit_code == 65
    assert "refused: the message is empty" in result.output
    result = runner.invoke(args=["mail", "ingest", "--max-size", "10"], input=RAW)
    assert result.exit_code == 65
    assert "more than the limit of 10" in result.output


def _pipe_to_ingest(size: int, app_env: dict[str, str]) -> tuple[int, str, int]:
    """Pipe `size` bytes to `flask mail ingest --max-size 1000` as a mail server would: (its
    exit code, its standard error, its peak memory in bytes). Checks the writer wrote them all."""
    with (
        subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE) as mta,
        subprocess.Popen(
            [sys.executable, "-m", "flask", "mail", "ingest", "--max-size", "1000"],
            stdin=mta.stdout,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=app_env,
        ) as command,
    ):
        assert mta.stdout is not None and command.stderr is not None
        mta.stdout.close()  # the command's end of the pipe is its own now
        _, status, usage = os.wait4(command.pid, 0)
        command.returncode = os.waitstatus_to_exitcode(status)
        stderr = command.stderr.read().decode()
        assert mta.wait(timeout=60) == 0  # no broken pipe
    return command.returncode, stderr, usage.ru_maxrss * 1024  # kilobytes on Linux


def test_an_oversized_message_is_refused_without_being_held_in_memory(app_env):
    """A mail server piping a message far over the limit gets exit 65 with the message's size,
    and the command's memory grows by much less than the message's 200 MB."""
    size = 200 * 1024 * 1024
    _, _, baseline = _pipe_to_ingest(2000, app_env)
    code, stderr, peak = _pipe_to_ingest(size, app_env)
    assert code == 65, stderr
    assert f"refused: the message has {size} bytes, more than the limit of 1000" in stderr
    assert peak - baseline < size / 4, (peak, baseline)


def test_a_listeners_size_limit_applies_before_the_message_is_read_whole(
    runner, app, make_account, make_case_type
):
    listener_id = make_route(app, make_account(), make_case_type())
    with app.app_context():
        listener = db.session.get(EmailListener, listener_id)
        assert listener is not None
        listener.max_message_bytes = 50
        db.session.commit()
    result = runner.invoke(args=["mail", "ingest", "--listener", str(listener_id)], input=RAW)
    assert result.exit_code == 65
    assert f"the message has {len(RAW)} bytes, more than the limit of 50" in result.output
    with app.app_context():
        assert db.session.scalar(select(InboundMessage)) is None


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


def _stored(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count(InboundMessage.id))) or 0


@both_databases
@pytest.mark.parametrize("number", ["0", "-1", "2147483648", "99999999999999999999999"])
def test_a_listener_id_that_names_no_listener_is_refused_with_exit_65(runner, app, number):
    """Refused like an unknown listener: nothing is stored and the mail server bounces it."""
    result = runner.invoke(args=["mail", "ingest", "--listener", number], input=RAW)
    assert result.exit_code == 65, result.output
    assert result.output == f"refused: there is no listener with the ID {number}\n"
    assert _stored(app) == 0


@pytest.mark.parametrize("size", ["-5", "1073741825", "99999999999999999999999"])
def test_a_size_limit_out_of_range_is_a_usage_error(runner, app, size):
    result = runner.invoke(args=["mail", "ingest", "--max-size", size], input=RAW)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--max-size': {size} is not in the range 0<=x<=1073741824." in (
        result.output
    )
    assert _stored(app) == 0


def test_listeners_run_with_redis_down_says_so_in_one_line(
    app_settings, make_account, make_listener
):
    listener_id = make_listener(make_account(receiver_host="mail.example.invalid"))
    down = create_app({**app_settings, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    result = down.test_cli_runner().invoke(args=["listeners", "run", str(listener_id), "--once"])
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: The job queue (Redis) is unavailable, so listener {listener_id} cannot be "
        "polled now: "
    )
    assert result.output.count("\n") == 1
