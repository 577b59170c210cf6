"""Create cases from email: one step makes the rule and the listener, and mail becomes cases."""

from __future__ import annotations

import html

import pytest
from sqlalchemy import func, select

from tests.fixtures.app import both_databases, csrf_token
from tests.fixtures.listeners import make_raw
from webapp.extensions import db
from webapp.models import Case, CaseType, EmailAccount, EmailListener, ServiceEmailRule
from webapp.services.instantiation import InstantiationError, create_cases_from_email
from webapp.services.rules import RuleData, save_rule
from workers.listeners import run_poll
from workers.queues import INBOUND
from workers.worker import run_worker


def _create(app, type_pk: int, account_pk: int, user, folder: str = "INBOX"):
    with app.app_context():
        case_type = db.session.get(CaseType, type_pk)
        account = db.session.get(EmailAccount, account_pk)
        listener, rule = create_cases_from_email(case_type, account, folder, user)
        db.session.commit()
        return listener.id, rule.id


def _counts(app) -> tuple[int, int]:
    with app.app_context():
        return (
            db.session.scalar(select(func.count(EmailListener.id))),
            db.session.scalar(select(func.count(ServiceEmailRule.id))),
        )


@both_databases
def test_creates_a_rule_opening_cases_and_a_listener_routed_to_it(
    app, make_user, make_account, make_case_type
):
    account = make_account(account_id="support")
    type_pk = make_case_type()
    listener_pk, rule_pk = _create(app, type_pk, account, make_user("admin"))

    with app.app_context():
        listener = db.session.get(EmailListener, listener_pk)
        rule = db.session.get(ServiceEmailRule, rule_pk)
        assert listener.name == rule.name == "Expense approval from support"
        assert (listener.account_id, listener.folder, listener.rule_id) == (
            account,
            "INBOX",
            rule_pk,
        )
        assert listener.enabled and listener.after_processing == "mark_read"
        assert (rule.action, rule.case_type_id, rule.field_mappings) == ("create_case", type_pk, [])


@both_databases
def test_refusals_are_sentences_and_save_nothing(app, make_user, make_account, make_case_type):
    admin = make_user("admin")
    account = make_account(account_id="support")
    published = make_case_type()
    draft = make_case_type("Leave request", "LEA", publish=False)
    no_receiver = make_account(account_id="sendonly")
    with app.app_context():
        # Saved accounts always have a receiver; rows from older versions may not.
        db.session.get(EmailAccount, no_receiver).receiver_host = ""
        db.session.commit()

    cases = [
        (draft, account, admin, "Publish Leave request first"),
        (published, no_receiver, admin, "The account sendonly has no receiver set up"),
        (published, account, make_user("designer"), "ask an admin"),
    ]
    for type_pk, account_pk, user, sentence in cases:
        with pytest.raises(InstantiationError, match=sentence):
            _create(app, type_pk, account_pk, user)
    assert _counts(app) == (0, 0)

    _create(app, published, account, admin)
    already = (
        "The listener Expense approval from support already brings the mail of INBOX in support "
        "to Expense approval: change it on the listeners page."
    )
    for folder in ("INBOX", "inbox"):
        with pytest.raises(InstantiationError, match=already):
            _create(app, published, account, admin, folder=folder)
    assert _counts(app) == (1, 1)
    # Whatever the listener has been renamed to.
    with app.app_context():
        db.session.scalar(select(EmailListener)).name = "Support desk"
        db.session.commit()
    with pytest.raises(InstantiationError, match="The listener Support desk already brings"):
        _create(app, published, account, admin)
    assert _counts(app) == (1, 1)
    # Another folder of the same account is another listener with a name of its own.
    _create(app, published, account, admin, folder="Orders")
    with app.app_context():
        names = set(db.session.scalars(select(EmailListener.name)))
    assert names == {"Support desk", "Expense approval from support (Orders)"}


def test_long_folder_names_that_differ_at_the_end_get_names_of_their_own(
    app, make_user, make_account, make_case_type
):
    admin = make_user("admin")
    account = make_account(account_id="support")
    type_pk = make_case_type()
    stem = "Customers/Europe/Germany/Berlin/Orders received by post and scanned/"
    folders = [stem + "2025", stem + "2026"]
    ids = [_create(app, type_pk, account, admin, folder=folder) for folder in folders]
    with app.app_context():
        listeners = [db.session.get(EmailListener, pk) for pk, _ in ids]
        rules = [db.session.get(ServiceEmailRule, pk) for _, pk in ids]
        assert [listener.folder for listener in listeners] == folders
        names = [listener.name for listener in listeners]
        assert names == [rule.name for rule in rules]
        assert names[0] != names[1]
        for name in names:
            assert name.startswith("Expense approval from support (Customers/Europe/")
            assert len(name) <= 100
    # Setting up the same folder again is still recognised and refused.
    with pytest.raises(InstantiationError, match="already brings the mail of Customers/"):
        _create(app, type_pk, account, admin, folder=folders[1])
    assert _counts(app) == (2, 2)


def test_a_listener_refusal_leaves_no_rule_behind(app, make_user, make_account, make_case_type):
    account = make_account(account_id="popbox", receiver_protocol="pop3", receiver_port=110)
    with pytest.raises(InstantiationError, match="A POP3 account has only one folder"):
        _create(app, make_case_type(), account, make_user("admin"), folder="Orders")
    assert _counts(app) == (0, 0)


def _path(type_pk: int) -> str:
    return f"/case-types/{type_pk}/from-email"


def test_admin_creates_cases_from_email_on_the_case_type_page(
    app, client, login_as, dovecot, mailbox_user, mailbox_account, make_case_type
):
    dovecot.create_folder(mailbox_user.login, "Claims")
    account = mailbox_account(account_id="claims")
    type_pk = make_case_type()
    login_as("admin")

    show = client.get(f"/case-types/{type_pk}").get_data(as_text=True)
    assert f'href="{_path(type_pk)}">Create cases from email</a>' in show
    assert "No listener feeds this case type yet." in show
    page = client.get(_path(type_pk)).get_data(as_text=True)
    assert '<option value="Claims">Claims</option>' in page

    token = csrf_token(client, _path(type_pk))
    response = client.post(
        _path(type_pk),
        data={"account_id": str(account), "folder": "Claims", "csrf_token": token},
        follow_redirects=True,
    )
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    with app.app_context():
        listener = db.session.scalar(select(EmailListener))
        listener_pk, rule_pk = listener.id, listener.rule_id
    assert "Cases of Expense approval now come from email" in text
    name = "Expense approval from claims (Claims)"
    assert f"<a href='/admin/listeners/{listener_pk}'>listener {name}</a>" in text
    assert f"<a href='/admin/rules/{rule_pk}'>rule {name}</a>" in text
    # The case type page now lists the listener feeding it.
    assert f'<a href="/admin/listeners/{listener_pk}">{name}</a>' in text
    assert client.get(f"/admin/listeners/{listener_pk}").status_code == 200

    again = client.post(
        _path(type_pk),
        data={"account_id": str(account), "folder": "Claims", "csrf_token": token},
    )
    assert again.status_code == 400
    assert (
        f"The listener {name} already brings the mail of Claims in claims to Expense approval"
    ) in html.unescape(again.get_data(as_text=True))


def test_errors_sit_beside_the_fields_and_csrf_is_required(
    app, client, login_as, make_account, make_case_type
):
    account = make_account(account_id="support", receiver_host="mail.example.invalid")
    type_pk = make_case_type()
    login_as("admin")
    page = client.get(_path(type_pk)).get_data(as_text=True)
    assert "did not list its folders" in page
    assert 'name="folder" required type="text" value="INBOX"' in page

    assert client.post(_path(type_pk), data={"account_id": str(account)}).status_code == 400
    token = csrf_token(client, _path(type_pk))
    response = client.post(
        _path(type_pk), data={"account_id": str(account), "folder": "", "csrf_token": token}
    )
    assert response.status_code == 400
    assert "Enter the folder to watch." in response.get_data(as_text=True)
    assert _counts(app) == (0, 0)


def test_designers_see_the_action_disabled_and_cannot_reach_it(
    app, client, login_as, make_user, make_account, make_case_type
):
    account = make_account(account_id="support")
    type_pk = make_case_type()
    _create(app, type_pk, account, make_user("admin"))
    login_as("designer")

    show = client.get(f"/case-types/{type_pk}").get_data(as_text=True)
    assert "disabled" in show.split("Create cases from email</button>")[0].rsplit("<button", 1)[1]
    assert "ask an admin to create cases from email" in show
    assert "Expense approval from support" in show
    assert client.get(_path(type_pk)).status_code == 403


def test_worker_cannot_reach_it(client, login_as, make_case_type):
    type_pk = make_case_type()
    login_as("worker")
    assert client.get(_path(type_pk)).status_code == 403


@both_databases
def test_mail_to_the_instantiated_mailbox_becomes_a_case(
    app, make_user, dovecot, mailbox_user, mailbox_account, make_case_type, redis_client
):
    account = mailbox_account(account_id="expenses")
    type_pk = make_case_type()
    listener_pk, _ = _create(app, type_pk, account, make_user("admin"))
    dovecot.deliver(mailbox_user.login, make_raw("Taxi to the airport", "Receipt attached."))

    with app.app_context():
        result = run_poll(listener_pk)
    assert result.summary() == "fetched 1, stored 1, duplicates 0", result.errors
    # The poll enqueued the stored message; a worker turns it into a case.
    assert run_worker(app, [INBOUND], burst=True)

    with app.app_context():
        case = db.session.scalar(select(Case))
        assert case is not None
        assert (case.subject, case.requester, case.case_type_id) == (
            "Taxi to the airport",
            "customer@customer.example",
            type_pk,
        )


def test_a_rule_of_the_same_name_is_not_taken_over(app, make_user, make_account, make_case_type):
    account = make_account(account_id="support")
    type_pk = make_case_type()
    with app.app_context():
        save_rule(None, RuleData("expense approval FROM support", "create_case", type_pk))
        db.session.commit()
    with pytest.raises(InstantiationError, match="A rule named Expense approval from support"):
        _create(app, type_pk, account, make_user("admin"))
    assert _counts(app) == (0, 1)
