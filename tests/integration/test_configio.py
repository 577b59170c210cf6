"""`flask config export` / `flask config import`: round trip, idempotence, ${ENV}, errors, for
case types and groups and for the mail side (accounts, rules, channels, listeners)."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import func, select

from tests.fixtures.app import both_databases
from webapp.extensions import db
from webapp.models import (
    CaseType,
    CaseTypeVersion,
    ChannelRoute,
    EmailAccount,
    EmailChannel,
    EmailListener,
    ServiceEmailRule,
)
from webapp.secretbox import get_secretbox
from webapp.services import channels as channel_service
from webapp.services import listeners as listener_service
from webapp.services import rules as rule_service
from webapp.services.keystores import create_keystore

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "expense-approval.yaml"


def _versions(app) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(CaseTypeVersion))


@both_databases
def test_the_example_imports_once_and_then_changes_nothing(app, runner):
    result = runner.invoke(args=["config", "import", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.output == "case type Expense approval: created, published version 1\n"
    result = runner.invoke(args=["config", "import", str(EXAMPLE)])
    assert result.output == "case type Expense approval: unchanged\n"
    assert _versions(app) == 1


@both_databases
def test_export_then_import_elsewhere_gives_the_same_case_types(
    app, runner, make_case_type, tmp_path, app_settings, redis_client
):
    from webapp import create_app

    make_case_type()
    make_case_type(name="Purchase request", prefix="PR", starter="purchase-request", publish=False)
    exported = tmp_path / "config.yaml"
    result = runner.invoke(args=["config", "export", "--output", str(exported)])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(exported.read_text())
    assert [(t["name"], t["publish"]) for t in data["case_types"]] == [
        ("Expense approval", True),
        ("Purchase request", False),
    ]

    # Importing what was exported into the same database changes nothing.
    result = runner.invoke(args=["config", "import", str(exported)])
    assert result.output.splitlines() == [
        "case type Expense approval: unchanged",
        "case type Purchase request: unchanged",
    ]

    other = create_app(
        {**app_settings, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    )
    with other.app_context():
        db.create_all()
    result = other.test_cli_runner().invoke(args=["config", "import", str(exported)])
    assert result.exit_code == 0, result.output
    again = tmp_path / "again.yaml"
    other.test_cli_runner().invoke(args=["config", "export", "--output", str(again)])
    assert again.read_text() == exported.read_text()
    with other.app_context():
        db.engine.dispose()


def test_environment_variables_are_substituted(app, runner, tmp_path, monkeypatch):
    text = EXAMPLE.read_text().replace("name: Expense approval", "name: ${CM_TYPE_NAME}", 1)
    path = tmp_path / "env.yaml"
    path.write_text(text)
    result = runner.invoke(args=["config", "import", str(path)])
    assert result.exit_code == 1
    assert (
        f"{path}: case_types[0].name: the environment variable CM_TYPE_NAME is not set."
        in result.output
    )
    monkeypatch.setenv("CM_TYPE_NAME", "Expenses (EU)")
    result = runner.invoke(args=["config", "import", str(path)])
    assert result.exit_code == 0, result.output
    with app.app_context():
        assert db.session.scalar(select(CaseType.name)) == "Expenses (EU)"


def test_errors_name_the_file_and_the_key_and_nothing_is_saved(app, runner, tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    stages = data["case_types"][0]["stages"]
    stages[1]["approver_field"] = "boss_email"
    stages[1]["notifications"][0]["subject"] = "Approve {{ amout }}"
    data["case_types"].append({"name": "Second", "prefix": "SEC", "colour": "blue"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(args=["config", "import", str(path)])
    assert result.exit_code == 1
    assert f"{path}: case_types[0].stages[1].approver_field: The approval stage" in result.output
    assert (
        f"{path}: case_types[0].stages[1].notifications[0]: The template uses {{{{ amout }}}}"
        in result.output
    )
    assert f"{path}: case_types[1].colour: unknown key" in result.output
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(CaseType)) == 0

    path.write_text("case_types: [\n  name: x")
    result = runner.invoke(args=["config", "import", str(path)])
    assert f"{path} (line 2, column 10): this is not valid YAML." in result.output
    path.write_text("accounts_typo: []\n")
    result = runner.invoke(args=["config", "import", str(path)])
    assert f"{path}: accounts_typo: unknown section" in result.output


def test_a_published_version_a_newer_check_refuses_still_imports_as_it_stands(
    app, runner, tmp_path
):
    """A version stored before a design check existed (here: a notification subject with a
    half-written placeholder) is exported and imported again unchanged; a file that changes
    it is held to every check."""
    assert runner.invoke(args=["config", "import", str(EXAMPLE)]).exit_code == 0
    with app.app_context():
        latest = db.session.scalar(select(CaseType)).latest_version
        definition = dict(latest.definition)
        stages = [dict(stage) for stage in definition["stages"]]
        noted = next(i for i, stage in enumerate(stages) if stage.get("notifications"))
        notes = [dict(note) for note in stages[noted]["notifications"]]
        notes[0]["subject"] = "About {{ case_id"
        stages[noted]["notifications"] = notes
        definition["stages"] = stages
        latest.definition = definition
        latest.case_type.draft = definition
        db.session.commit()
    exported = tmp_path / "exported.yaml"
    assert runner.invoke(args=["config", "export", "--output", str(exported)]).exit_code == 0
    result = runner.invoke(args=["config", "import", str(exported)])
    assert result.exit_code == 0, result.output
    assert "case type Expense approval: unchanged" in result.output
    assert _versions(app) == 1

    data = yaml.safe_load(exported.read_text())
    data["case_types"][0]["stages"][noted]["notifications"][0]["body"] += " Thanks."
    exported.write_text(yaml.safe_dump(data))
    result = runner.invoke(args=["config", "import", str(exported)])
    assert result.exit_code != 0
    assert "“{{ case_id” is not a placeholder" in result.output
    assert _versions(app) == 1


def test_changing_the_file_publishes_a_new_version(app, runner, tmp_path):
    runner.invoke(args=["config", "import", str(EXAMPLE)])
    data = yaml.safe_load(EXAMPLE.read_text())
    data["case_types"][0]["stages"][0]["name"] = "Claim"
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(args=["config", "import", str(path)])
    assert result.output == ("case type Expense approval: draft updated, published version 2\n")
    assert _versions(app) == 2


def test_demo_seed_publishes_the_expense_approval_once(app, runner):
    first = runner.invoke(args=["demo", "seed"])
    assert "Demo case type: Expense approval (EXP-…), published" in first.output
    second = runner.invoke(args=["demo", "seed"])
    assert "Demo case type: Expense approval (EXP-…)\n" in second.output
    assert _versions(app) == 1


def test_a_mistyped_key_inside_a_stage_is_named_not_ignored(app, runner, tmp_path):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["case_types"][0]["stages"][2]["asignee_kind"] = "role"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(args=["config", "import", str(path)])
    assert result.exit_code == 1
    assert f"{path}: case_types[0].stages[2].asignee_kind: unknown key; use key, name" in (
        result.output
    )
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(CaseType)) == 0


# -- accounts, rules, channels and listeners ----------------------------------------------------

MAIL_EXAMPLE = EXAMPLE.parent / "support-mailbox.yaml"
MAIL_LINES = [
    "account support: created",
    "case type Support request: created, published version 1",
    "rule Support requests by email: created",
    "channel Support triage: created",
    "listener Support inbox: created",
]


def _counts(app) -> dict[str, int]:
    with app.app_context():
        return {
            model.__name__: db.session.scalar(select(func.count()).select_from(model))
            for model in (EmailAccount, CaseType, ServiceEmailRule, EmailChannel, EmailListener)
        }


def _secret(app, account_id: str, column: str = "smtp_password_encrypted") -> str | None:
    with app.app_context():
        account = db.session.scalar(
            select(EmailAccount).where(EmailAccount.account_id == account_id)
        )
        token = getattr(account, column)
        return get_secretbox().decrypt(token) if token else None


@both_databases
def test_the_mail_example_imports_with_its_password_from_the_environment(app, runner, monkeypatch):
    monkeypatch.delenv("SUPPORT_MAILBOX_PASSWORD", raising=False)
    result = runner.invoke(args=["config", "import", str(MAIL_EXAMPLE)])
    assert result.exit_code == 1
    assert (
        f"{MAIL_EXAMPLE}: accounts[0].smtp_password: the environment variable "
        "SUPPORT_MAILBOX_PASSWORD is not set." in result.output
    )
    monkeypatch.setenv("SUPPORT_MAILBOX_PASSWORD", "correct horse")
    dry = runner.invoke(args=["config", "import", "--dry-run", str(MAIL_EXAMPLE)])
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines() == [*MAIL_LINES, "Dry run: nothing was changed."]
    assert set(_counts(app).values()) == {0}

    result = runner.invoke(args=["config", "import", str(MAIL_EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == MAIL_LINES
    assert set(_counts(app).values()) == {1}
    assert _secret(app, "support") == "correct horse"
    with app.app_context():
        listener = db.session.scalar(select(EmailListener))
        assert (listener.account.account_id, listener.channel.name, listener.rule) == (
            "support",
            "Support triage",
            None,
        )
        assert listener.move_to_folder == "Processed"
        channel = listener.channel
        assert channel.default_rule.case_type.email_account.account_id == "support"
        assert [r.target_kind for r in channel.routes] == ["ignore", "quarantine"]

    again = runner.invoke(args=["config", "import", str(MAIL_EXAMPLE)])
    assert again.output.splitlines() == [
        line.replace("created, published version 1", "unchanged").replace("created", "unchanged")
        for line in MAIL_LINES
    ]
    exported = runner.invoke(args=["config", "export"]).output
    assert "correct horse" not in exported and "password_encrypted" not in exported
    assert "smtp_password" not in exported


def _mail_setup(app, make_account, make_case_type, truststore_id: int) -> None:
    """Accounts, a case type sending from one, a rule, a channel and a listener, made through
    the services as the admin pages make them."""
    account_pk = make_account(
        account_id="support",
        smtp_truststore_id=truststore_id,
        smtp_password="smtp-secret",
        smtp_auth="password",
        receiver_password="imap-secret",
        smtp_advanced={"mail.smtp.timeout": "20000"},
        require_authenticated_replies=True,
        trusted_authserv_ids="mx.example.com",
    )
    make_account(account_id="sales", name="Sales", receiver_protocol="pop3", receiver_port=110)
    type_pk = make_case_type()
    with app.app_context():
        case_type = db.session.get(CaseType, type_pk)
        case_type.email_account_id = account_pk
        rule = rule_service.save_rule(
            None,
            rule_service.RuleData(
                name="Expenses by email",
                action="create_case",
                case_type_id=type_pk,
                mappings=[{"field": "amount", "source": "body_key", "value": "Amount"}],
                send_ack=True,
                ack_subject="Got it: {{ case_id }}",
            ),
        )
        channel = channel_service.save_channel(
            None, name="Triage", mode="all", default_kind="rule", default_id=rule.id
        )
        for lines, kind, target in (
            ("subject contains newsletter", "ignore", None),
            ("sender_domain equals example.org\nheader:X-Spam equals yes", "quarantine", None),
            ("subject regex ^taxi", "case_type", type_pk),
        ):
            channel_service.add_route(
                channel, channel_service.parse_condition_lines(lines), kind, target
            )
        values = {name: getattr(listener_service.new_listener(), name) for name in LISTENER}
        listener_service.save_listener(
            None, {**values, "name": "Expenses inbox", "account_id": account_pk, "rule_id": rule.id}
        )
        listener_service.save_listener(
            None,
            {
                **values,
                "name": "Triage inbox",
                "account_id": account_pk,
                "folder": "Inbox/Triage",
                "channel_id": channel.id,
                "after_processing": "move",
                "move_to_folder": "Done",
                "enabled": False,
            },
        )
        db.session.commit()


LISTENER = listener_service.FIELDS


@both_databases
def test_mail_configuration_round_trips_into_a_fresh_database(
    app,
    runner,
    make_account,
    make_case_type,
    tmp_path,
    app_settings,
    monkeypatch,
    test_ca,
    test_ca_truststore,
):
    from webapp import create_app

    _mail_setup(app, make_account, make_case_type, test_ca_truststore)
    exported = tmp_path / "config.yaml"
    assert runner.invoke(args=["config", "export", "-o", str(exported)]).exit_code == 0
    data = yaml.safe_load(exported.read_text())
    assert [a["account_id"] for a in data["accounts"]] == ["sales", "support"]
    assert data["case_types"][0]["email_account"] == "support"
    assert data["accounts"][1]["smtp_truststore"] == "Test CA"  # keystores go by name
    assert data["accounts"][1]["trusted_authserv_ids"] == "mx.example.com"
    assert data["channels"][0]["routes"][1] == {
        "conditions": ["sender_domain equals example.org", "header:X-Spam equals yes"],
        "target": "quarantine",
    }
    assert {x["name"]: (x["rule"], x["channel"]) for x in data["listeners"]} == {
        "Expenses inbox": ("Expenses by email", None),
        "Triage inbox": (None, "Triage"),
    }
    result = runner.invoke(args=["config", "import", str(exported)])
    assert result.exit_code == 0, result.output
    assert all(line.endswith(": unchanged") for line in result.output.splitlines())
    assert len(result.output.splitlines()) == 7
    assert _secret(app, "support") == "smtp-secret"  # the file has none: the stored one stays

    # Elsewhere, the secrets come from the environment.
    text = exported.read_text()
    for account_id, variable in (("support", "SUPPORT_PW"), ("sales", "SALES_PW")):
        text = text.replace(
            f"- account_id: {account_id}\n",
            f"- account_id: {account_id}\n  receiver_password: ${{{variable}}}\n"
            + (f"  smtp_password: ${{{variable}}}\n" if account_id == "support" else ""),
        )
    with_secrets = tmp_path / "with-secrets.yaml"
    with_secrets.write_text(text)
    other = create_app(
        {**app_settings, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'other.db'}"}
    )
    with other.app_context():
        db.create_all()
    other_runner = other.test_cli_runner()
    refused = other_runner.invoke(args=["config", "import", str(exported)])
    assert refused.exit_code == 1
    assert (
        f"{exported}: accounts[1].smtp_truststore: there is no keystore named Test CA; upload "
        "it under Admin → Keystores first." in refused.output
    )
    with other.app_context():
        create_keystore("Test CA", "truststore", "ca.pem", test_ca.ca_cert.read_bytes(), "")
        db.session.commit()
    refused = other_runner.invoke(args=["config", "import", str(exported)])
    assert refused.exit_code == 1
    assert f"{exported}: accounts[1].smtp_password: Enter the password." in refused.output
    assert f"{exported}: accounts[0].receiver_password: Enter the password." in refused.output
    monkeypatch.setenv("SUPPORT_PW", "new-secret")
    monkeypatch.setenv("SALES_PW", "pop-secret")
    result = other_runner.invoke(args=["config", "import", str(with_secrets)])
    assert result.exit_code == 0, result.output
    again = tmp_path / "again.yaml"
    other_runner.invoke(args=["config", "export", "-o", str(again)])
    assert again.read_text() == exported.read_text()
    assert _secret(other, "support", "receiver_password_encrypted") == "new-secret"
    with other.app_context():
        db.engine.dispose()


def test_a_stored_password_is_kept_unless_the_file_gives_another(app, runner, tmp_path):
    path = tmp_path / "account.yaml"
    account = {
        "account_id": "support",
        "name": "Support",
        "smtp_email": "support@example.com",
        "smtp_user_id": "support@example.com",
        "smtp_password": "first",
        "smtp_host": "mail.example.com",
        "smtp_port": 587,
        "receiver_host": "mail.example.com",
        "receiver_port": 993,
    }
    path.write_text(yaml.safe_dump({"accounts": [account]}))
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "account support: created\n"
    )
    del account["smtp_password"]
    path.write_text(yaml.safe_dump({"accounts": [account]}))
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "account support: unchanged\n"
    )
    assert _secret(app, "support") == "first"
    path.write_text(yaml.safe_dump({"accounts": [{**account, "smtp_password": "first"}]}))
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "account support: unchanged\n"
    )
    path.write_text(yaml.safe_dump({"accounts": [{**account, "smtp_password": "second"}]}))
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "account support: updated\n"
    )
    assert _secret(app, "support") == "second"


@both_databases
def test_a_bad_mail_configuration_names_every_problem_and_saves_nothing(
    app, runner, tmp_path, monkeypatch, test_ca_truststore
):
    monkeypatch.setenv("SUPPORT_MAILBOX_PASSWORD", "pw")
    data = yaml.safe_load(MAIL_EXAMPLE.read_text())
    data["accounts"][0]["smtp_tls_min"] = 1.2  # a number in YAML is taken as its text
    sales = {**data["accounts"][0], "account_id": "sales", "smtp_port": 70000}
    sales.update(smtp_truststore="Corporate CA", receiver_auth="oauth")
    sales.update(receiver_auth_profile="Contoso", receiver_use_sender_credentials=False)
    sales.update(signing_keystore="Test CA", trusted_authserv_ids="mx.example.com, not a host")
    data["accounts"].append(sales)
    data["accounts"].append({"account_id": "bad id!", "name": "Bad", "colour": "red"})
    data["accounts"].append({"account_id": "other", "name": "Other", "smtp_hots": "x"})
    rule = data["rules"][0]
    rule["field_mappings"][1]["field"] = "produkt"
    data["rules"].append({"name": "Orphan", "action": "create_case", "case_type": "Nothing"})
    data["channels"][0]["routes"][0]["conditions"].append("subject regex (unclosed")
    data["channels"][0]["routes"][1]["target"] = "rule"
    listener = data["listeners"][0]
    listener["folder"] = ""
    listener["poll_interval_seconds"] = 1
    listener["enabled"] = "yes"
    data["listeners"].append({"name": "Second", "account": "nowhere", "rule": "Orphan"})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    result = runner.invoke(args=["config", "import", str(path)])
    assert result.exit_code == 1
    lines = [line.removeprefix(f"{path}: ") for line in result.output.splitlines()[1:]]
    for expected in (
        "accounts[1].smtp_port: The port is a number from 1 to 65535.",
        "accounts[1].smtp_truststore: there is no keystore named Corporate CA; upload it under "
        "Admin → Keystores first.",
        "accounts[1].receiver_auth_profile: there is no OAuth 2.0 profile named Contoso; create "
        "it under Admin → OAuth 2.0 profiles first.",
        "accounts[1].signing_keystore: the keystore Test CA is not a signing keystore.",
        "accounts[1].trusted_authserv_ids: “not a host” is not a host name",
        "accounts[1].receiver_user_id: Enter the user ID (the mailbox address) for XOAUTH2.",
        "accounts[2].colour: unknown key; docs/configuration.md lists the keys.",
        "accounts[2].account_id: Use 1 to 64 letters, digits, dots, hyphens or underscores",
        "accounts[3].smtp_hots: unknown key; did you mean smtp_host?",
        "rules[0].field_mappings[1]: produkt is not a field of the case type",
        "rules[1].case_type: there is no case type named Nothing; add it to the case_types "
        "section or create it first.",
        "channels[0].routes[0].conditions[1]: The regular expression “(unclosed” is not valid",
        "channels[0].routes[1].rule: name the service email rule it leads to.",
        "listeners[0].folder: Enter the folder to watch (at most 255 characters).",
        "listeners[0].poll_interval_seconds: The interval is a whole number from 10 to 86,400.",
        "listeners[0].enabled: must be true or false.",
        "listeners[1].account: there is no email account named nowhere; add it to the accounts "
        "section or create it first.",
        "listeners[1].rule: the service email rule Orphan is not saved: see rules[1].",
        "channels[0].default_rule: the service email rule Support requests by email is not "
        "saved: see rules[0].",
        "listeners[0].channel: the email channel Support triage is not saved: see channels[0].",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, lines)
    assert not any("smtp_tls_min" in line for line in lines)
    assert set(_counts(app).values()) == {0}
    assert "smtp_port" not in result.output.split("accounts[1]")[0]  # accounts[0] is fine


def test_every_mail_section_names_items_given_twice_without_a_name_or_not_as_a_mapping(
    app, runner, tmp_path, monkeypatch
):
    monkeypatch.setenv("SUPPORT_MAILBOX_PASSWORD", "pw")
    data = yaml.safe_load(MAIL_EXAMPLE.read_text())
    expected = []
    for section, key, noun, shape in (
        ("accounts", "account_id", "account an ID", "account_id, name and the settings"),
        ("rules", "name", "rule a name", "name, action and case_type"),
        ("channels", "name", "channel a name", "name, mode, default and routes"),
        ("listeners", "name", "listener a name", "name, account and folder"),
    ):
        items = data[section]
        first = items[0]
        expected += [
            f"{section}[{len(items)}].{key}: {first[key]!r} appears twice in the file.",
            f"{section}[{len(items) + 1}].{key}: give the {noun}.",
            f"{section}[{len(items) + 2}]: must be a mapping with {shape}.",
        ]
        items += [dict(first), {k: v for k, v in first.items() if k != key}, "not a mapping"]
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    result = runner.invoke(args=["config", "import", str(path)])

    assert result.exit_code == 1
    lines = [line.removeprefix(f"{path}: ") for line in result.output.splitlines()[1:]]
    for line in expected:
        assert line in lines, (line, lines)
    assert set(_counts(app).values()) == {0}


def test_channel_routes_are_edited_in_place_by_the_file(app, runner, tmp_path, monkeypatch):
    monkeypatch.setenv("SUPPORT_MAILBOX_PASSWORD", "pw")
    runner.invoke(args=["config", "import", str(MAIL_EXAMPLE)])
    with app.app_context():
        route_ids = list(db.session.scalars(select(ChannelRoute.id).order_by(ChannelRoute.id)))
    data = yaml.safe_load(MAIL_EXAMPLE.read_text())
    routes = data["channels"][0]["routes"]
    routes[1] = {"conditions": ["subject contains order"], "target": "case_type",
                 "case_type": "Support request"}  # fmt: skip
    routes.append({"conditions": "header:X-Priority equals 1", "target": "quarantine"})
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump({"channels": data["channels"]}))
    result = runner.invoke(args=["config", "import", str(path)])
    assert result.output == "channel Support triage: updated\n"
    with app.app_context():
        rows = db.session.scalars(select(ChannelRoute).order_by(ChannelRoute.position)).all()
        assert [r.id for r in rows[:2]] == route_ids
        assert [(r.position, r.target_kind) for r in rows] == [
            (1, "ignore"),
            (2, "case_type"),
            (3, "quarantine"),
        ]
        assert rows[1].case_type.name == "Support request"
    del routes[1:]
    path.write_text(yaml.safe_dump({"channels": data["channels"]}))
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "channel Support triage: updated\n"
    )
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "channel Support triage: unchanged\n"
    )
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(ChannelRoute)) == 1


def test_a_case_type_names_its_sending_account(app, runner, tmp_path, make_account):
    data = yaml.safe_load(EXAMPLE.read_text())
    data["case_types"][0]["email_account"] = "nowhere"
    path = tmp_path / "sending.yaml"
    path.write_text(yaml.safe_dump(data))
    result = runner.invoke(args=["config", "import", str(path)])
    assert f"{path}: case_types[0].email_account: there is no email account named nowhere" in (
        result.output
    )
    make_account(account_id="finance")
    data["case_types"][0]["email_account"] = "finance"
    path.write_text(yaml.safe_dump(data))
    assert runner.invoke(args=["config", "import", str(path)]).exit_code == 0
    exported = yaml.safe_load(runner.invoke(args=["config", "export"]).output)
    assert exported["case_types"][0]["email_account"] == "finance"

    del data["case_types"][0]["email_account"]  # left out: stays as it is
    path.write_text(yaml.safe_dump(data))
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "case type Expense approval: unchanged\n"
    )
    data["case_types"][0]["email_account"] = None
    path.write_text(yaml.safe_dump(data))
    assert runner.invoke(args=["config", "import", str(path)]).output == (
        "case type Expense approval: sending account cleared\n"
    )
    with app.app_context():
        assert db.session.scalar(select(CaseType.email_account_id)) is None
