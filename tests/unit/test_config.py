from __future__ import annotations

import stat

import pytest
from cryptography.fernet import Fernet

from webapp.config import ConfigError, load_config, normalise_database_url


def test_development_generates_keys_once_into_the_instance_folder(tmp_path):
    first = load_config({}, str(tmp_path))
    second = load_config({}, str(tmp_path))
    assert first["SECRET_KEY"] == second["SECRET_KEY"] and len(first["SECRET_KEY"]) == 64
    assert first["CASEMAIL_SECRET_KEYS"] == second["CASEMAIL_SECRET_KEYS"]
    for name in ("secret_key", "secret_keys"):
        mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
        assert mode == 0o600, oct(mode)
    assert first["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'casemail.db'}"
    assert first["SESSION_COOKIE_SECURE"] is False
    assert first["CASEMAIL_DEV_SANDBOX"] is True


def test_production_requires_both_secrets(tmp_path):
    with pytest.raises(ConfigError, match="SECRET_KEY and CASEMAIL_SECRET_KEYS must be set"):
        load_config({"CASEMAIL_ENV": "production"}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"^CASEMAIL_SECRET_KEYS must be set"):
        load_config({"CASEMAIL_ENV": "production", "SECRET_KEY": "x"}, str(tmp_path))
    assert not (tmp_path / "secret_key").exists()


def test_production_defaults_are_safe(tmp_path):
    key = Fernet.generate_key().decode()
    config = load_config(
        {
            "CASEMAIL_ENV": "production",
            "SECRET_KEY": "s",
            "CASEMAIL_SECRET_KEYS": f" {key} ,",
            "CASEMAIL_BASE_URL": "https://casemail.example.com/",
        },
        str(tmp_path),
    )
    assert config["CASEMAIL_SECRET_KEYS"] == [key]
    assert config["SESSION_COOKIE_SECURE"] is True
    assert config["CASEMAIL_DEV_SANDBOX"] is False
    assert config["CASEMAIL_BASE_URL"] == "https://casemail.example.com"


def test_production_requires_the_address_that_links_in_emails_point_to(tmp_path):
    key = Fernet.generate_key().decode()
    settings = {"CASEMAIL_ENV": "production", "SECRET_KEY": "s", "CASEMAIL_SECRET_KEYS": key}
    with pytest.raises(ConfigError, match="CASEMAIL_BASE_URL must be set"):
        load_config(settings, str(tmp_path))
    assert load_config({}, str(tmp_path))["CASEMAIL_BASE_URL"] == "http://127.0.0.1:5000"


def test_links_point_at_the_port_make_run_serves_on_unless_a_base_url_is_set(tmp_path):
    config = load_config({"CASEMAIL_PORT": "5057"}, str(tmp_path))
    assert config["CASEMAIL_BASE_URL"] == "http://127.0.0.1:5057"
    given = {"CASEMAIL_PORT": "5057", "CASEMAIL_BASE_URL": "http://casemail.test:8000"}
    assert load_config(given, str(tmp_path))["CASEMAIL_BASE_URL"] == "http://casemail.test:8000"


@pytest.mark.parametrize("value", ["0", "65536", "http", "-1"])
def test_a_port_that_is_not_one_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="CASEMAIL_PORT must be a"):
        load_config({"CASEMAIL_PORT": value}, str(tmp_path))


@pytest.mark.parametrize(
    "value",
    [
        "casemail.example.com",
        "ftp://casemail.example.com",
        "https://",
        "https://casemail.example.com/?next=x",
        "https://casemail.example.com/#top",
        "https://user@casemail.example.com",
        "https://casemail.example.com:http/",
        "https://casemail.example.com/a b",
    ],
)
def test_a_base_url_that_cannot_make_links_is_refused(tmp_path, value):
    with pytest.raises(ConfigError, match="CASEMAIL_BASE_URL must be the http:// or https://"):
        load_config({"CASEMAIL_BASE_URL": value}, str(tmp_path))


def test_a_base_url_may_have_a_path(tmp_path):
    config = load_config(
        {"CASEMAIL_BASE_URL": " https://example.com:8443/casemail/ "}, str(tmp_path)
    )
    assert config["CASEMAIL_BASE_URL"] == "https://example.com:8443/casemail"


def test_a_malformed_key_is_named_without_echoing_it(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config({"CASEMAIL_SECRET_KEYS": "hunter2"}, str(tmp_path))
    assert "not a Fernet key" in str(info.value) and "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql://u@h:5432/db", "postgresql+psycopg://u@h:5432/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:////var/lib/casemail.db", "sqlite:////var/lib/casemail.db"),
    ],
)
def test_database_urls_are_mapped_to_the_psycopg_driver(given, expected):
    assert normalise_database_url(given) == expected


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match="CASEMAIL_ENV must be one of"):
        load_config({"CASEMAIL_ENV": "prod"}, str(tmp_path))
    with pytest.raises(ConfigError, match="CASEMAIL_DEV_SMTP_PORT must be a whole number"):
        load_config({"CASEMAIL_DEV_SMTP_PORT": "25x"}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"CASEMAIL_SMTP_KEEP_SECONDS must be 0 or more, got -1"):
        load_config({"CASEMAIL_SMTP_KEEP_SECONDS": "-1"}, str(tmp_path))
    with pytest.raises(ConfigError, match="CASEMAIL_MAIL_HOST_POLICY must be allow-private"):
        load_config({"CASEMAIL_MAIL_HOST_POLICY": "anything"}, str(tmp_path))
    with pytest.raises(ConfigError, match="yes/no"):
        load_config({"CASEMAIL_COOKIE_SECURE": "maybe"}, str(tmp_path))
