"""The app boots on both databases and answers like a product: health, headers, error pages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.app import both_databases

ROOT = Path(__file__).resolve().parents[2]


@both_databases
def test_health_check_reports_database_and_redis(client, app):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_health_check_reports_redis_down(app_settings, redis_client):
    from webapp import create_app
    from webapp.extensions import db

    app = create_app({**app_settings, "REDIS_URL": "redis://127.0.0.1:1/0"})
    with app.app_context():
        db.create_all()
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.json["checks"]["redis"].startswith("error")
    assert response.json["checks"]["database"] == "ok"


def test_anonymous_visitor_is_sent_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/login?next=")


def test_pages_carry_security_headers(client):
    response = client.get("/login")
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_pages_load_assets_from_the_app_not_a_cdn(client):
    html = client.get("/login").get_data(as_text=True)
    assert "cdn.jsdelivr" not in html and "https://" not in html
    assert "/bootstrap/static/css/bootstrap.min.css" in html
    assert client.get("/bootstrap/static/css/bootstrap.min.css").status_code == 200
    assert client.get("/static/casemail.css").status_code == 200


def test_unknown_page_is_a_friendly_404(client, login_as):
    login_as("worker")
    response = client.get("/no/such/page")
    assert response.status_code == 404
    assert "There is nothing at this address" in response.get_data(as_text=True)


def test_api_errors_are_json(client):
    response = client.get("/api/v1/nothing-here")
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


def test_unexpected_error_is_logged_and_shows_500_page(app, client, login_as, caplog):
    @app.route("/boom")
    def boom():
        raise RuntimeError("kaboom")

    login_as("worker")
    response = client.get("/boom")
    assert response.status_code == 500
    assert "Something went wrong" in response.get_data(as_text=True)
    assert "kaboom" not in response.get_data(as_text=True)
    assert any("unhandled error" in r.message for r in caplog.records)


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("CASEMAIL_BASE_URL", "casemail.example.com", "CASEMAIL_BASE_URL must be the http://"),
        ("CASEMAIL_ENV", "prod", "CASEMAIL_ENV must be one of development, production, testing"),
    ],
)
def test_a_bad_setting_stops_the_start_with_a_sentence_not_a_traceback(
    app_env, setting, value, said
):
    result = subprocess.run(
        [sys.executable, "-m", "flask", "users", "list"],
        cwd=ROOT,
        env={**app_env, setting: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3  # gunicorn stops rather than restarting workers
    assert result.stderr.startswith(f"Casemail cannot start: {said}")
    assert "Traceback" not in result.stderr


def test_gunicorn_stops_on_a_bad_setting_instead_of_restarting_workers(app_env):
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            *("--bind", "127.0.0.1:0", "--workers", "1", "wsgi:app"),
        ],
        cwd=ROOT,
        env={
            **{
                k: v
                for k, v in app_env.items()
                if k not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")
            },
            "CASEMAIL_BASE_URL": "casemail.example.com",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3
    assert result.stderr.count("Casemail cannot start: CASEMAIL_BASE_URL must be") == 1
    assert "Worker failed to boot" in result.stderr
