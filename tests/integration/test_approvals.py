"""Approval requests and decisions by reply, on SQLite and PostgreSQL: a case entering an
approval stage asks each approver, and their replies are checked before anything moves."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests.fixtures.app import PASSWORD, both_databases, csrf_token
from tests.support.approvals import MANAGER, REQUESTER, approval_draft
from tests.support.replies import Desk, Request, set_up_desk
from webapp.config import ConfigError, load_config
from webapp.extensions import db
from webapp.models import (
    Approval,
    CaseEvent,
    EmailListener,
    OutboundKind,
    OutboundMessage,
    User,
)
from webapp.models.types import utcnow
from webapp.services import approvals as approval_service
from webapp.services import cases as case_service
from webapp.services import channels as channel_service
from webapp.services import ingest
from webapp.services.approval_links import APPROVE_MARK, REJECT_MARK

OTHER = "other.approver@example.com"


@pytest.fixture
def desk(app, make_account, make_case_type) -> Desk:
    return set_up_desk(app, make_account, make_case_type)


@pytest.fixture
def make_desk(app, make_account, make_case_type) -> Callable[..., Desk]:
    """Factory: make_desk(**options) sets up a desk for approval_draft(**options)."""

    def make(**options: Any) -> Desk:
        return set_up_desk(app, make_account, make_case_type, definition=approval_draft(**options))

    return make


def _refused_reply(desk: Desk, first_line: str) -> tuple[str, Request, CaseEvent, OutboundMessage]:
    """Reply `first_line` to a new case's request, which decides nothing; (case reference, the
    request, the refusal on the timeline, the answer to the approver)."""
    reference = desk.open_case()
    request = desk.request(reference)
    desk.ingest(desk.reply(request, first_line))
    assert desk.case(reference).stage == "manager_approval"
    assert desk.approvals(reference)[MANAGER].status == "pending"
    [refused] = desk.events(reference, "refused")
    [answer] = desk.answers(reference)
    return reference, request, refused, answer


def _decided_by(desk: Desk, reference: str) -> list[str]:
    return [e.action for e in desk.events(reference, "action")]


@both_databases
def test_entering_the_stage_sends_each_approver_one_request_that_says_how_to_answer(desk):
    reference = desk.open_case()

    outbox = desk.outbox(reference)
    to_manager = [row for row in outbox if MANAGER in row.recipients]
    assert [row.kind for row in to_manager] == [OutboundKind.APPROVAL_REQUEST.value]
    # The designed notification still reaches its other recipient, without a token.
    to_requester = [row for row in outbox if REQUESTER in row.recipients]
    assert [row.kind for row in to_requester] == [OutboundKind.NOTIFICATION.value]
    assert to_requester[0].token_encrypted is None

    request = desk.request(reference)
    assert request.subject == f"Approve [{reference}]: 120.50 for Travel"
    body = request.body
    assert body.startswith(f"{REQUESTER} asks you to approve 120.50 (Travel).")
    assert f"{reference}: Train tickets" in body
    assert "Amount: 120.50" in body and "Category: Travel" in body
    assert "Reply with APPROVE or REJECT on the first line; anything after is your comment." in body
    assert "A reason is required when you reject" in body
    lines = body.splitlines()
    assert APPROVE_MARK in lines and REJECT_MARK in lines  # each on a line of its own

    approval = desk.approvals(reference)[MANAGER]
    assert approval.status == "pending"
    assert approval.stage == "manager_approval" and approval.stage_visit == 1
    assert approval.token_hash == approval_service.token_digest(request.token)
    assert request.token not in approval.token_hash
    assert approval.outbound_id == to_manager[0].id
    lifetime = approval.expires_at - approval.created_at
    assert abs(lifetime - timedelta(days=14)) < timedelta(minutes=1)


@both_databases
def test_approve_by_reply_moves_the_case_and_confirms(desk):
    reference = desk.open_case()
    request = desk.request(reference)

    inbound = desk.ingest(desk.reply(request, "Approved, go ahead."))

    assert desk.case(reference).stage == "payment"
    assert _decided_by(desk, reference) == ["Approve"]
    action = desk.events(reference, "action")[0]
    assert action.channel == "email" and action.actor == MANAGER and action.comment == "go ahead."
    approval = desk.approvals(reference)[MANAGER]
    assert approval.status == "approved" and approval.decided_via == "email"
    assert approval.used_at is not None and approval.inbound_id == inbound.id
    assert inbound.status == "processed" and inbound.case_id == desk.case(reference).id
    assert "decided by email: approved" in inbound.status_reason
    assert inbound.correlation.startswith("matched by reply token")
    [answer] = desk.answers(reference)
    assert answer.recipients == [MANAGER]
    assert f"You approved {reference}; it moved on to Payment." in answer.body
    assert answer.in_reply_to is not None and answer.token_encrypted is None


@both_databases
def test_reject_needs_a_reason_when_the_stage_says_so(desk):
    reference, request, refused, answer = _refused_reply(desk, "REJECT")

    assert refused.comment == "A rejection needs a reason, and the reply gave none."
    assert refused.actor == MANAGER and refused.channel == "email"
    assert "a rejection needs a reason" in answer.body

    desk.ingest(desk.reply(request, "Rejected: no receipt attached."))

    case = desk.case(reference)
    assert case.stage == "rejected" and case.status == "resolved"
    assert desk.events(reference, "action")[0].comment == "no receipt attached."
    assert desk.approvals(reference)[MANAGER].status == "rejected"
    assert f"You rejected {reference}" in desk.answers(reference)[-1].body


@both_databases
def test_reject_without_reason_is_applied_when_none_is_required(make_desk):
    desk = make_desk(reason_required=False)
    reference = desk.open_case()
    assert "A comment is optional." in desk.request(reference).body

    desk.ingest(desk.reply(desk.request(reference), "No"))

    assert desk.case(reference).stage == "rejected"


@both_databases
def test_a_forged_sender_is_refused_and_not_answered(desk):
    reference = desk.open_case()
    request = desk.request(reference)

    inbound = desk.ingest(desk.reply(request, "APPROVE", sender="mallory@evil.example"))

    assert desk.case(reference).stage == "manager_approval"
    assert desk.approvals(reference)[MANAGER].status == "pending"
    [refused] = desk.events(reference, "refused")
    assert refused.actor == "mallory@evil.example"
    assert "came from mallory@evil.example" in refused.comment
    assert desk.answers(reference) == []
    assert inbound.status == "processed"
    assert any("Decision refused" in step["note"] for step in inbound.decisions)


@both_databases
def test_several_from_addresses_are_refused(desk):
    reference = desk.open_case()
    request = desk.request(reference)

    desk.ingest(desk.reply(request, "APPROVE", from_header=f"{MANAGER}, mallory@evil.example"))

    assert desk.case(reference).stage == "manager_approval"
    [refused] = desk.events(reference, "refused")
    assert "2 From addresses" in refused.comment
    assert desk.answers(reference) == []


@both_databases
def test_a_used_token_does_not_decide_again(desk):
    reference = desk.open_case()
    request = desk.request(reference)
    desk.ingest(desk.reply(request, "APPROVE"))

    desk.ingest(desk.reply(request, "REJECT: changed my mind"))

    assert desk.case(reference).stage == "payment"
    assert _decided_by(desk, reference) == ["Approve"]
    [refused] = desk.events(reference, "refused")
    assert "used already" in refused.comment
    answer = desk.answers(reference)[-1]
    assert f"You already approved {reference}" in answer.body
    assert "Your reply changed nothing." in answer.body


@both_databases
def test_a_token_of_another_case_decides_nothing_for_its_sender(desk):
    first = desk.open_case(manager=MANAGER, subject="Taxi")
    second = desk.open_case(manager=OTHER, subject="Hotel")
    token_of_first = desk.request(first, MANAGER)

    # The approver of the second case answers with the first case's request in hand.
    desk.ingest(desk.reply(token_of_first, "APPROVE", sender=OTHER))

    assert desk.case(first).stage == "manager_approval"
    assert desk.case(second).stage == "manager_approval"
    [refused] = desk.events(first, "refused")
    assert f"came from {OTHER}, but the request was sent to {MANAGER}" in refused.comment
    assert desk.events(second, "refused") == []


@both_databases
def test_an_expired_request_is_refused_and_the_approver_told(app, desk):
    reference = desk.open_case()
    request = desk.request(reference)
    with app.app_context():
        approval = db.session.scalar(select(Approval).where(Approval.approver == MANAGER))
        assert approval is not None
        approval.expires_at = utcnow() - timedelta(minutes=1)
        db.session.commit()

    desk.ingest(desk.reply(request, "APPROVE"))

    assert desk.case(reference).stage == "manager_approval"
    assert desk.events(reference, "refused")[0].comment == "The request has expired."
    assert "This request expired on" in desk.answers(reference)[0].body


@both_databases
def test_a_reply_after_the_case_left_the_stage_is_already_decided(app, desk, make_user):
    reference = desk.open_case()
    request = desk.request(reference)
    admin = make_user("admin")
    with app.app_context():
        case = case_service.find_case(reference)
        assert case is not None
        case_service.apply_action(case, "approve", user=db.session.get(User, admin.id))
        db.session.commit()
    assert desk.approvals(reference)[MANAGER].status == "superseded"

    desk.ingest(desk.reply(request, "REJECT: too expensive"))

    assert desk.case(reference).stage == "payment"
    assert "left the stage" in desk.events(reference, "refused")[0].comment
    answer = desk.answers(reference)[0]
    assert f"{reference} has moved on" in answer.body


@both_databases
def test_an_auto_reply_to_the_request_is_ignored_and_leaves_it_pending(desk):
    reference = desk.open_case()
    request = desk.request(reference)

    inbound = desk.ingest(
        desk.reply(
            request,
            "I am out of the office until Monday.",
            headers=[("Auto-Submitted", "auto-replied")],
        )
    )

    assert inbound.status == "ignored"
    assert desk.approvals(reference)[MANAGER].status == "pending"
    assert desk.events(reference, "refused") == []
    assert desk.answers(reference) == []
    # The request still decides afterwards.
    desk.ingest(desk.reply(request, "OK"))
    assert desk.case(reference).stage == "payment"


@both_databases
def test_a_reply_without_a_decision_word_gets_the_instructions(desk):
    _, _, refused, answer = _refused_reply(desk, "Can you send me the receipt first?")

    assert "could not be understood" in answer.body
    assert 'began with: "Can you send me the receipt first?"' in answer.body
    assert "Reply with APPROVE or REJECT on the first line" in answer.body
    assert "neither APPROVE nor REJECT" in refused.comment


@both_databases
def test_all_approvers_mode_waits_for_everyone(make_desk):
    desk = make_desk(mode="all", approvers=[MANAGER, OTHER])
    reference = desk.open_case()
    assert "Every approver asked must approve" in desk.request(reference, MANAGER).body

    desk.ingest(desk.reply(desk.request(reference, MANAGER), "APPROVE"))

    case = desk.case(reference)
    assert case.stage == "manager_approval" and case.approvals == [MANAGER]
    assert "it waits for the other approvers" in desk.answers(reference)[0].body
    approvals = desk.approvals(reference)
    assert approvals[MANAGER].status == "approved" and approvals[OTHER].status == "pending"

    desk.ingest(desk.reply(desk.request(reference, OTHER), "Yes", sender=OTHER))

    assert desk.case(reference).stage == "payment"
    assert desk.approvals(reference)[OTHER].status == "approved"


@both_databases
def test_an_admin_asked_as_approver_decides_only_their_part_by_email(make_desk, make_user):
    make_user("admin", email=MANAGER)
    desk = make_desk(mode="all", approvers=[MANAGER, OTHER])
    reference = desk.open_case()

    desk.ingest(desk.reply(desk.request(reference, MANAGER), "APPROVE"))

    assert desk.case(reference).stage == "manager_approval"
    [action] = desk.events(reference, "action")
    assert action.actor == MANAGER and action.actor_id is not None


@both_databases
def test_two_approvers_answering_at_once_make_one_transition(app, make_desk, monkeypatch):
    desk = make_desk(mode="any", approvers=[MANAGER, OTHER])
    reference = desk.open_case()
    stored = [
        desk.store(desk.reply(desk.request(reference, MANAGER), "APPROVE")),
        desk.store(desk.reply(desk.request(reference, OTHER), "REJECT: over budget", sender=OTHER)),
    ]
    # Both transactions read the case before either writes it (where the database lets them:
    # SQLite's write lock already keeps the second one waiting at its claim).
    both_read = threading.Barrier(2)
    apply_action = case_service.apply_action

    def racing(*args, **kwargs):
        with contextlib.suppress(threading.BrokenBarrierError):
            both_read.wait(timeout=1.5)
        return apply_action(*args, **kwargs)

    monkeypatch.setattr(case_service, "apply_action", racing)
    retried: list[int] = []
    failures: list[BaseException] = []

    def ingest_until_done(inbound_id: int) -> None:
        with app.app_context():
            try:
                for _ in range(5):
                    try:
                        ingest.ingest_message(inbound_id)
                        db.session.commit()
                        return
                    except ingest.IngestError:
                        retried.append(inbound_id)
            except BaseException as exc:
                failures.append(exc)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=ingest_until_done, args=(i,)) for i in stored]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert failures == []
    decided = desk.events(reference, "action")
    assert len(decided) == 1
    winner = decided[0].actor
    loser = OTHER if winner == MANAGER else MANAGER
    assert desk.case(reference).stage == ("payment" if winner == MANAGER else "rejected")
    approvals = desk.approvals(reference)
    assert approvals[winner].status in ("approved", "rejected")
    assert approvals[loser].status == "superseded"
    [refused] = desk.events(reference, "refused")
    assert refused.actor == loser
    told = [a for a in desk.answers(reference) if a.recipients == [loser]]
    assert len(told) == 1 and "this request no longer decides" in told[0].body
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        # The case row's version check caught the second writer; its message was retried.
        assert len(retried) == 1


@both_databases
def test_the_rule_tester_shows_a_reply_as_a_decision(app, desk):
    reference = desk.open_case()
    raw = desk.reply(desk.request(reference), "APPROVE")
    with app.app_context():
        result = ingest.plan(raw, None)
        assert result.action == ingest.DECIDE
        assert result.summary == f"Decision reply for {reference} (approval of {MANAGER})."
        assert result.case is not None and result.case.reference == reference


def test_a_decision_reply_is_not_routed_by_the_listeners_channel(app, desk):
    reference = desk.open_case()
    with app.app_context():
        # A channel that ignores every message it does not route (and routes none).
        channel = channel_service.save_channel(
            None, name="Triage", mode="first", default_kind="ignore"
        )
        listener = db.session.get(EmailListener, desk.listener_id)
        assert listener is not None
        listener.rule_id, listener.channel_id = None, channel.id
        db.session.commit()

    inbound = desk.ingest(desk.reply(desk.request(reference), "APPROVE"))

    assert inbound.status == "processed"
    assert desk.case(reference).stage == "payment"


@both_databases
def test_entering_the_stage_again_issues_new_requests(app, desk, make_user):
    reference = desk.open_case()
    first = desk.request(reference)
    admin = make_user("admin")
    with app.app_context():
        case = case_service.find_case(reference)
        assert case is not None
        user = db.session.get(User, admin.id)
        case_service.apply_action(case, "reject", user=user, comment="redo")
        case_service.reopen_case(case, user=user, channel="web")
        db.session.commit()
    second = desk.request(reference)
    assert second.token != first.token

    desk.ingest(desk.reply(first, "APPROVE"))
    assert desk.case(reference).stage == "manager_approval"

    desk.ingest(desk.reply(second, "APPROVE"))
    assert desk.case(reference).stage == "payment"


# Decisions by signed link --------------------------------------------------------------------


@both_databases
def test_a_link_decides_once(app, desk):
    reference = desk.open_case()
    request = desk.request(reference)
    with app.app_context():
        approval = approval_service.find_by_token(request.token)
        assert approval is not None
        assert approval_service.refusal_for_link(approval) is None
        sentence = approval_service.decide_by_link(approval, "approve", "  fine by me ")
        db.session.commit()
    assert sentence == f"You approved {reference}; it moved on to Payment."
    assert desk.case(reference).stage == "payment"
    stored = desk.approvals(reference)[MANAGER]
    assert stored.status == "approved" and stored.decided_via == "link"
    assert stored.comment == "fine by me"

    with app.app_context():
        approval = approval_service.find_by_token(request.token)
        assert approval is not None
        assert "You already approved" in (approval_service.refusal_for_link(approval) or "")
        with pytest.raises(approval_service.ApprovalError, match="already approved"):
            approval_service.decide_by_link(approval, "reject", "no")
    assert _decided_by(desk, reference) == ["Approve"]


@both_databases
def test_a_link_refuses_a_rejection_without_reason_and_an_expired_request(app, desk):
    reference = desk.open_case()
    request = desk.request(reference)
    with app.app_context():
        approval = approval_service.find_by_token(request.token)
        assert approval is not None
        with pytest.raises(approval_service.ApprovalError, match="Give a reason"):
            approval_service.decide_by_link(approval, "reject", "  ")
        approval.expires_at = utcnow() - timedelta(seconds=1)
        db.session.commit()
    with app.app_context():
        approval = approval_service.find_by_token(request.token)
        assert approval is not None
        assert "expired" in (approval_service.refusal_for_link(approval) or "")
        with pytest.raises(approval_service.ApprovalError, match="expired"):
            approval_service.decide_by_link(approval, "approve", "")
    assert desk.case(reference).stage == "manager_approval"


def test_find_by_token_only_knows_issued_tokens(app, desk):
    desk.open_case()
    with app.app_context():
        assert approval_service.find_by_token("not a token") is None
        assert approval_service.find_by_token("a" * 26) is None


def test_the_request_lifetime_is_a_setting(app, desk, tmp_path):
    app.config["CASEMAIL_APPROVAL_TOKEN_DAYS"] = 3
    reference = desk.open_case()
    approval = desk.approvals(reference)[MANAGER]
    lifetime = approval.expires_at - approval.created_at
    assert abs(lifetime - timedelta(days=3)) < timedelta(minutes=1)
    with pytest.raises(ConfigError, match="CASEMAIL_APPROVAL_TOKEN_DAYS must be at least 1"):
        load_config({"CASEMAIL_APPROVAL_TOKEN_DAYS": "0"}, str(tmp_path))
    assert load_config({}, str(tmp_path))["CASEMAIL_APPROVAL_TOKEN_DAYS"] == 14


@both_databases
def test_a_decision_on_the_case_page_uses_up_the_approvers_request(app, client, desk, make_user):
    reference = desk.open_case()
    request = desk.request(reference)
    make_user("worker", email=MANAGER)
    client.post(
        "/login",
        data={
            "email": MANAGER,
            "password": PASSWORD,
            "csrf_token": csrf_token(client, "/login"),
        },
    )
    with app.app_context():
        version = case_service.find_case(reference).row_version
    response = client.post(
        f"/cases/{reference}/actions/approve",
        data={
            "csrf_token": csrf_token(client, f"/cases/{reference}"),
            "row_version": version,
            "comment": "Fine by me",
        },
    )
    assert response.status_code == 302
    approval = desk.approvals(reference)[MANAGER]
    assert (approval.status, approval.decided_via) == ("approved", "web")

    desk.ingest(desk.reply(request, "REJECT: changed my mind"))

    assert desk.case(reference).stage == "payment"
    assert _decided_by(desk, reference) == ["Approve"]
    assert "used already" in desk.events(reference, "refused")[0].comment
