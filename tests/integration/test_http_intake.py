"""POST /api/v1/listeners/<id>/messages: a mail server pushes raw MIME over HTTP."""

from __future__ import annotations

import gzip

import pytest
from sqlalchemy import func, select

from tests.fixtures.app import both_databases
from tests.support.inbound import load, make_route, message
from webapp import create_app
from webapp.extensions import db, get_queue
from webapp.models import Case, EmailListener, InboundMessage, User
from webapp.services.users import issue_api_token
from workers.queues import INBOUND
from workers.worker import run_worker

MIME = {"Content-Type": "message/rfc822"}


@pytest.fixture
def token(app, make_user):
    """token(role="admin") -> Authorization headers for a fresh API token of a new user."""

    def make(role: str = "admin") -> dict[str, str]:
        user = make_user(role, email=f"{role}-api@example.com")
        with app.app_context():
            _, secret = issue_api_token(db.session.get(User, user.id), "mail server")
            db.session.commit()
        return {"Authorization": f"Bearer {secret}", **MIME}

    return make


@pytest.fixture
def listener_id(app, make_account, make_case_type) -> int:
    return make_route(app, make_account(), make_case_type())


def stored(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(InboundMessage)) or 0


@both_databases
def test_a_pushed_message_is_stored_then_a_worker_makes_the_case(app, client, token, listener_id):
    raw = message()
    response = client.post(f"/api/v1/listeners/{listener_id}/messages", headers=token(), data=raw)
    assert response.status_code == 202, response.json
    assert response.json == {"id": 1, "status": "received"}

    inbound = load(app, 1)
    assert (inbound.raw, inbound.source, inbound.listener_id) == (raw, "http", listener_id)
    assert inbound.subject == "Taxi to the airport"
    assert get_queue(INBOUND, app).count == 1
    assert run_worker(app, [INBOUND], burst=True) is True
    assert load(app, 1).status == "processed"
    with app.app_context():
        assert db.session.scalar(select(Case.subject)) == "Taxi to the airport"


def test_only_admin_tokens_may_push(app, client, token, listener_id):
    url = f"/api/v1/listeners/{listener_id}/messages"
    response = client.post(url, headers=MIME, data=message())
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for role in ("worker", "designer"):
        response = client.post(url, headers=token(role), data=message())
        assert response.status_code == 403
        assert response.json["message"] == "Only admins send messages to a listener."
    assert stored(app) == 0


def test_a_message_over_the_listeners_limit_is_refused_with_413(app, client, token, listener_id):
    with app.app_context():
        db.session.get(EmailListener, listener_id).max_message_bytes = 200
        db.session.commit()
    url, headers = f"/api/v1/listeners/{listener_id}/messages", token()
    response = client.post(url, headers=headers, data=message(body="x" * 300))
    assert response.status_code == 413
    assert response.json == {
        "error": "too_large",
        "message": "The message is larger than the listener's limit of 200 bytes.",
    }
    assert stored(app) == 0
    assert client.post(url, headers=headers, data=message(body="")).status_code == 202


def test_wrong_listener_type_or_empty_body_are_refused_with_json(app, client, token, listener_id):
    headers = token()
    response = client.post("/api/v1/listeners/999/messages", headers=headers, data=message())
    assert (response.status_code, response.json["error"]) == (404, "not_found")

    url = f"/api/v1/listeners/{listener_id}/messages"
    response = client.post(url, headers={**headers, "Content-Type": "text/plain"}, data=message())
    assert response.status_code == 415
    assert response.json["message"] == "Send the raw message as message/rfc822."

    response = client.post(url, headers=headers, data=b"  \r\n")
    assert response.status_code == 422
    assert response.json["message"] == "The message was refused: the message is empty."
    assert stored(app) == 0


def test_a_compressed_body_is_refused_not_stored(app, client, token, listener_id):
    url, headers = f"/api/v1/listeners/{listener_id}/messages", token()
    for encoding in ("gzip", "deflate, gzip"):
        response = client.post(
            url,
            headers={**headers, "Content-Encoding": encoding},
            data=gzip.compress(message()),
        )
        assert response.status_code == 415
        assert response.json["message"] == (
            "Send the raw message uncompressed, without a Content-Encoding."
        )
    assert stored(app) == 0
    response = client.post(url, headers={**headers, "Content-Encoding": "identity"}, data=message())
    assert response.status_code == 202


def test_a_body_over_the_servers_upload_limit_names_the_limit_and_its_setting(
    app_settings, token, listener_id
):
    small = create_app({**app_settings, "MAX_CONTENT_LENGTH": 1024 * 1024})
    response = small.test_client().post(
        f"/api/v1/listeners/{listener_id}/messages",
        headers=token(),
        data=message(body="x" * (2 * 1024 * 1024)),
    )
    assert response.status_code == 413
    assert response.json["message"] == (
        "The upload is larger than this server accepts: 1 MB (CASEMAIL_MAX_UPLOAD_MB)."
    )


def test_503_with_retry_after_when_the_database_is_unavailable(app_settings, tmp_path):
    broken = create_app(
        dict(
            app_settings,
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/missing-dir/db.sqlite",
        )
    )
    response = broken.test_client().post(
        "/api/v1/listeners/1/messages",
        headers={"Authorization": "Bearer cm_whatever", **MIME},
        data=message(),
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "60"
    assert response.json["error"] == "unavailable"
