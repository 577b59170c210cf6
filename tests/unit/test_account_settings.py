"""Pure parts of email accounts: advanced overrides, host policy, presets, keystore expiry."""

from __future__ import annotations

import datetime as dt
import ipaddress

import pytest

from webapp.mail import advanced
from webapp.mail.hostpolicy import HostPolicy, HostRefused, check_address, check_host, parse_policy
from webapp.mail.keystore import expires_soon
from webapp.mail.presets import PRESETS, presets_as_data


def test_overrides_are_parsed_and_normalised():
    text = "# tuning\nmail.smtp.timeout = 010000\n\nmail.smtp.auth.plain.disable=YES\n"
    assert advanced.parse_overrides(text, advanced.SENDER_KEYS) == {
        "mail.smtp.timeout": "10000",
        "mail.smtp.auth.plain.disable": "true",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mail.smtp.colour=blue", "Unknown key mail.smtp.colour (line 1)"),
        ("mail.imap.timeout=5", "Unknown key mail.imap.timeout (line 1)"),
        ("mail.smtp.timeout=0", "mail.smtp.timeout must be a whole number of milliseconds"),
        ("mail.smtp.timeout=600001", "from 1 to 600000"),
        ("mail.smtp.auth.plain.disable=maybe", "must be true or false, not 'maybe'"),
        ("mail.smtp.localhost=bad host", "must be a host name"),
        ("just words", "Line 1 is not of the form key=value"),
        ("mail.smtp.timeout=1\nmail.smtp.timeout=2", "The key mail.smtp.timeout is given twice."),
    ],
)
def test_bad_overrides_name_the_key(text, message):
    with pytest.raises(
        advanced.AdvancedError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        advanced.parse_overrides(text, advanced.SENDER_KEYS)


def test_override_helpers():
    overrides = {"mail.pop3.timeout": "2500", "mail.imaps.auth.plain.disable": "true"}
    assert advanced.seconds(overrides, "mail.pop3.timeout", 30) == 2.5
    assert advanced.seconds(overrides, "mail.pop3.connectiontimeout", 15) == 15
    assert advanced.flag(overrides, "mail.imaps.auth.plain.disable")
    assert advanced.format_overrides(overrides).splitlines() == [
        "mail.imaps.auth.plain.disable=true",
        "mail.pop3.timeout=2500",
    ]


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "fe80::1",
        "fd00:ec2::254",
        "100.100.100.200",
        "192.0.0.192",
        "::ffff:169.254.169.254",
        "2002:a9fe:a9fe::1",
    ],
)
def test_link_local_and_metadata_are_always_refused(address):
    for policy in HostPolicy:
        with pytest.raises(HostRefused, match="link-local or cloud metadata"):
            check_address(ipaddress.ip_address(address), policy, address)


def test_private_addresses_follow_the_policy():
    for host in ("10.0.0.5", "192.168.1.2", "127.0.0.1", "localhost", "mail.corp.internal"):
        check_host(host, HostPolicy.ALLOW_PRIVATE)
    for host in ("10.0.0.5", "127.0.0.1", "localhost", "[::1]", "fec0::25", "2002:a00:5::1"):
        with pytest.raises(HostRefused, match="public-only"):
            check_host(host, HostPolicy.PUBLIC_ONLY)
    check_host("smtp.gmail.com", HostPolicy.PUBLIC_ONLY)
    check_host("8.8.8.8", HostPolicy.PUBLIC_ONLY)


def test_host_syntax_and_policy_names():
    for bad in ("mail server", "http://mail.example.com", "", "0.0.0.0"):  # noqa: S104
        with pytest.raises(HostRefused):
            check_host(bad, HostPolicy.ALLOW_PRIVATE)
    assert parse_policy("") is HostPolicy.ALLOW_PRIVATE
    assert parse_policy(" Public-Only ") is HostPolicy.PUBLIC_ONLY
    with pytest.raises(HostRefused, match="must be allow-private or public-only"):
        parse_policy("everything")


def test_presets_offer_graph_only_for_office_365():
    assert [key for key, preset in PRESETS.items() if preset.graph] == ["office365"]
    data = presets_as_data()
    assert data["gmail"]["smtp"] == {"host": "smtp.gmail.com", "port": 587, "security": "starttls"}
    assert data["icloud"]["pop3"] is None
    assert data["other"]["smtp"] is None


def test_expiry_warning_starts_30_days_ahead():
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert expires_soon((now + dt.timedelta(days=30)).isoformat(), now)
    assert expires_soon((now - dt.timedelta(days=1)).isoformat(), now)
    assert not expires_soon((now + dt.timedelta(days=31)).isoformat(), now)
