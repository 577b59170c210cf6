"""The approval loop end to end, against real servers: a request delivered to Dovecot opens a
case through a real listener poll; the real sender job sends the approval request to aiosmtpd;
the approver's reply, built from the captured request as a mail program builds it, goes back
into Dovecot; the poll and ingest jobs apply the decision; the answers go out again.

Jobs run in this process (a burst SimpleWorker), so every step is deterministic.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import timedelta
from urllib.parse import urlsplit

import pytest
from sqlalchemy import update

from tests.fixtures.app import both_databases, csrf_token
from tests.fixtures.cases import load_case
from tests.support.approvals import (
    MANAGER,
    REQUESTER,
    ApprovalLoop,
    addresses,
    approval_draft,
    link_path,
    links_in,
    new_request,
    recipients_of,
    reply_to,
    request_text,
    set_up_loop,
    text_of,
)
from webapp.approvals.views import POSTS_PER_WINDOW
from webapp.extensions import db
from webapp.models import Approval, InboundMessage, User
from webapp.models.types import utcnow
from webapp.services.approval_links import link_for
from webapp.services.cases import apply_action, find_case
from workers.inbound import ingest_messages

APPROVAL_STAGE = "manager_approval"


@pytest.fixture
def loop(app, dovecot, mailbox_user, smtp_server) -> ApprovalLoop:
    return set_up_loop(app, dovecot, mailbox_user, smtp_server())


def _open_case(loop: ApprovalLoop, body: str | None = None, subject: str = "Train tickets"):
    """Email a request in; returns (case reference, the approval request the manager got)."""
    loop.deliver_and_process(new_request(subject=subject, body=body))
    reference = loop.only_case_reference()
    assert loop.case(reference).stage == APPROVAL_STAGE
    (request,) = loop.new_mail(1)
    return reference, request


def _answers_to(loop: ApprovalLoop, count: int, address: str = MANAGER) -> list[str]:
    """The text of the next `count` captured messages, each checked to go to `address`."""
    texts = []
    for message in loop.new_mail(count):
        assert recipients_of(message) == [address]
        texts.append(f"{message.parsed['Subject']}\n{text_of(message)}")
    return texts


def _refusals(loop: ApprovalLoop, reference: str) -> list[str]:
    """What the case timeline says about refused approval attempts."""
    return [e.comment for e in loop.events(reference) if e.kind == "refused"]


# -- the request ------------------------------------------------------------------------------


def test_the_request_tells_the_approver_how_to_answer_and_carries_a_token(loop):
    reference, request = _open_case(loop)
    parsed = request.parsed
    assert recipients_of(request) == [MANAGER]
    assert f"[{reference}]" in parsed["Subject"]
    reply_address = addresses(parsed["Reply-To"])[0]
    local, _, domain = reply_address.partition("@")
    assert "+" in local and domain == "example.com"
    token = local.partition("+")[2]
    assert parsed["Auto-Submitted"] == "auto-generated"
    text = text_of(request)
    assert "APPROVE" in text and "REJECT" in text and "first line" in text
    assert "120.50" in text and "Travel" in text  # the case summary and fields
    links = links_in(request)
    assert set(links) == {"approve", "reject"}
    # Only the token's hash is kept; the outbox no longer holds it once sent.
    (approval,) = loop.approvals(reference)
    assert approval.approver == MANAGER
    assert approval.token_hash == hashlib.sha256(token.encode()).hexdigest()
    (sent,) = [o for o in loop.outbox() if o.kind == "approval_request"]
    assert sent.status == "sent" and sent.token_encrypted is None
    assert token not in sent.body and "/approvals/" not in sent.body


# -- replies by email -------------------------------------------------------------------------


@both_databases
def test_approve_by_reply_moves_the_case_and_confirms(loop):
    reference, request = _open_case(loop)
    loop.deliver_and_process(reply_to(request, "APPROVE"))
    case = loop.case(reference)
    assert case.stage == "payment"
    messages = loop.new_mail(2)
    by_recipient = {recipients_of(m)[0]: m for m in messages}
    assert set(by_recipient) == {MANAGER, REQUESTER}
    confirmation = text_of(by_recipient[MANAGER])
    assert reference in by_recipient[MANAGER].parsed["Subject"]
    assert "approved" in confirmation.lower()
    # The confirmation answers the reply, so it threads under it in the approver's mail.
    reply_id = loop.inbound()[-1].message_id
    assert by_recipient[MANAGER].parsed["In-Reply-To"] == reply_id
    assert "approved" in text_of(by_recipient[REQUESTER]).lower()
    (approval,) = loop.approvals(reference)
    assert approval.status == "approved" and approval.decided_via == "email"
    moved = [e for e in loop.events(reference) if e.to_stage == "payment"]
    assert len(moved) == 1 and moved[0].channel == "email" and moved[0].actor == MANAGER


def test_reject_with_a_reason_resolves_the_case_with_the_reason(loop):
    reference, request = _open_case(loop)
    loop.deliver_and_process(reply_to(request, "REJECT Hotel was not approved in advance"))
    case = loop.case(reference)
    assert case.stage == "rejected" and case.status == "resolved"
    rejected = [e for e in loop.events(reference) if e.to_stage == "rejected"]
    assert len(rejected) == 1
    assert "Hotel was not approved in advance" in rejected[0].comment
    answers = {recipients_of(m)[0]: text_of(m) for m in loop.new_mail(2)}
    assert "You rejected" in answers[MANAGER]
    assert "Hotel was not approved in advance" in answers[MANAGER]
    assert "was rejected" in answers[REQUESTER]


def test_reject_without_a_reason_is_refused_when_the_stage_needs_one(loop):
    reference, request = _open_case(loop)
    loop.deliver_and_process(reply_to(request, "REJECT"))
    assert loop.case(reference).stage == APPROVAL_STAGE
    (answer,) = _answers_to(loop, 1)
    assert "reason" in answer.lower()
    (approval,) = loop.approvals(reference)
    assert approval.status == "pending"  # the approver can still answer with a reason
    loop.deliver_and_process(reply_to(request, "REJECT Not in the budget"))
    assert loop.case(reference).stage == "rejected"


def test_reject_without_a_reason_when_none_is_needed(app, dovecot, mailbox_user, smtp_server):
    loop = set_up_loop(
        app, dovecot, mailbox_user, smtp_server(), draft=approval_draft(reason_required=False)
    )
    reference, request = _open_case(loop)
    loop.deliver_and_process(reply_to(request, "No"))
    assert loop.case(reference).stage == "rejected"


def test_an_answer_without_a_decision_word_gets_the_instructions(loop):
    reference, request = _open_case(loop)
    loop.deliver_and_process(reply_to(request, "Can we talk about this tomorrow?"))
    assert loop.case(reference).stage == APPROVAL_STAGE
    (answer,) = _answers_to(loop, 1)
    assert "APPROVE" in answer and "REJECT" in answer


# -- refused replies --------------------------------------------------------------------------


def test_a_reply_from_another_sender_is_refused_and_recorded(loop):
    reference, request = _open_case(loop)
    loop.deliver_and_process(reply_to(request, "APPROVE", sender="mallory@evil.example"))
    assert loop.case(reference).stage == APPROVAL_STAGE
    (approval,) = loop.approvals(reference)
    assert approval.status == "pending"
    (refusal,) = _refusals(loop, reference)
    assert "mallory@evil.example" in refusal and MANAGER in refusal
    # Nothing is sent to the forged sender.
    assert all("mallory@evil.example" not in recipients_of(m) for m in loop.no_new_mail())


def test_a_reply_with_several_from_addresses_is_refused(loop):
    reference, request = _open_case(loop)
    raw = reply_to(request, "APPROVE")
    raw = raw.replace(
        b"From: The Manager <manager@example.com>",
        b"From: The Manager <manager@example.com>, mallory@evil.example",
    )
    loop.deliver_and_process(raw)
    assert loop.case(reference).stage == APPROVAL_STAGE
    (refusal,) = _refusals(loop, reference)
    assert "From addresses" in refusal


def test_a_used_token_decides_nothing_more(loop):
    reference, request = _open_case(loop)
    loop.deliver_and_process(reply_to(request, "APPROVE"))
    assert loop.case(reference).stage == "payment"
    loop.new_mail(2)  # the confirmation and the requester's notification
    loop.deliver_and_process(reply_to(request, "REJECT Changed my mind"))
    assert loop.case(reference).stage == "payment"
    (answer,) = _answers_to(loop, 1)
    assert "already" in answer.lower()
    assert len([e for e in loop.events(reference) if e.to_stage]) == 2  # created, approved


def test_a_token_from_another_case_does_not_decide_this_one(loop):
    first, first_request = _open_case(loop, subject="Train tickets")
    second, _ = _open_case(loop, body=request_text(amount="999.00"), subject="Hotel")
    # The manager answers the first request but writes the second case's id in the subject.
    loop.deliver_and_process(reply_to(first_request, "APPROVE", subject=f"Re: [{second}] Hotel"))
    assert loop.case(second).stage == APPROVAL_STAGE
    assert loop.case(first).stage == "payment"  # the token names the case it was made for


def test_an_expired_token_is_refused(loop):
    reference, request = _open_case(loop)
    with loop.app.app_context():
        db.session.execute(update(Approval).values(expires_at=utcnow() - timedelta(minutes=1)))
        db.session.commit()
    loop.deliver_and_process(reply_to(request, "APPROVE"))
    assert loop.case(reference).stage == APPROVAL_STAGE
    (answer,) = _answers_to(loop, 1)
    assert "expired" in answer.lower()
    assert _refusals(loop, reference) == ["The request has expired."]


def test_an_automatic_reply_to_the_request_is_not_answered(loop):
    reference, request = _open_case(loop)
    raw = reply_to(
        request,
        "I am out of the office until Monday.",
        extra_headers={"Auto-Submitted": "auto-replied"},
        subject="Automatic reply: away",
    )
    loop.deliver_and_process(raw)
    assert loop.case(reference).stage == APPROVAL_STAGE
    assert loop.no_new_mail() == []
    (approval,) = loop.approvals(reference)
    assert approval.status == "pending"


@both_databases
def test_two_approvers_answering_at_once_make_one_transition(
    app, dovecot, mailbox_user, smtp_server
):
    approvers = ["anna@example.com", "bert@example.com"]
    loop = set_up_loop(
        app, dovecot, mailbox_user, smtp_server(), draft=approval_draft(approvers=approvers)
    )
    loop.deliver_and_process(new_request())
    reference = loop.only_case_reference()
    requests = {recipients_of(m)[0]: m for m in loop.new_mail(2)}
    assert set(requests) == set(approvers)
    for approver in approvers:
        loop.deliver(reply_to(requests[approver], "APPROVE", sender=approver))
    # Store both replies, then ingest them in two workers released at the same moment.
    stored: list[int] = []
    with app.app_context():
        from webapp.models import EmailListener
        from webapp.services.receiving import poll

        poll(db.session.get(EmailListener, loop.listener_id), committed=stored.extend)
    assert len(stored) == 2
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def ingest(inbound_id: int) -> None:
        try:
            with app.app_context():
                start.wait()
                ingest_messages([inbound_id])
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=ingest, args=(i,)) for i in stored]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    # A reply that lost the race waits for its retry (the reconciler); run what is left.
    with app.app_context():
        waiting = [
            m.id for m in db.session.query(InboundMessage).filter_by(status="received").all()
        ]
    if waiting:
        ingest_messages(waiting)
    loop.run_jobs()
    assert loop.case(reference).stage == "payment"
    moved = [e for e in loop.events(reference) if e.to_stage == "payment"]
    assert len(moved) == 1
    answers = {recipients_of(m)[0]: text_of(m) for m in loop.new_mail(3)}
    assert set(answers) == {*approvers, REQUESTER}
    confirmed = [a for a in approvers if "moved on to Payment" in answers[a]]
    refused = [a for a in approvers if "Your reply changed nothing" in answers[a]]
    assert len(confirmed) == 1 and len(refused) == 1 and confirmed != refused


def test_all_approvers_mode_waits_for_everyone(app, dovecot, mailbox_user, smtp_server):
    approvers = ["anna@example.com", "bert@example.com"]
    loop = set_up_loop(
        app,
        dovecot,
        mailbox_user,
        smtp_server(),
        draft=approval_draft(approvers=approvers, mode="all"),
    )
    loop.deliver_and_process(new_request())
    reference = loop.only_case_reference()
    requests = {recipients_of(m)[0]: m for m in loop.new_mail(2)}
    assert "Every approver asked must approve" in text_of(requests["anna@example.com"])
    loop.deliver_and_process(reply_to(requests["anna@example.com"], "Yes", sender=approvers[0]))
    assert loop.case(reference).stage == APPROVAL_STAGE
    (first,) = _answers_to(loop, 1, approvers[0])
    assert "waits for the other approvers" in first
    loop.deliver_and_process(reply_to(requests["bert@example.com"], "OK", sender=approvers[1]))
    assert loop.case(reference).stage == "payment"
    answers = {recipients_of(m)[0]: text_of(m) for m in loop.new_mail(2)}
    assert "moved on to Payment" in answers[approvers[1]] and REQUESTER in answers


# -- the signed link --------------------------------------------------------------------------


def test_a_signed_link_decides_only_through_the_page(loop, client):
    reference, request = _open_case(loop)
    links = links_in(request)
    page = client.get(links["approve"])
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"Approve {reference}?" in html and "120.50" in html
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert loop.case(reference).stage == APPROVAL_STAGE  # opening the link decided nothing
    token = csrf_token(client, links["approve"])
    done = client.post(links["approve"], data={"csrf_token": token, "comment": "Fine"})
    assert done.status_code == 200
    assert "is now in the stage" in done.get_data(as_text=True)
    assert loop.case(reference).stage == "payment"
    (approval,) = loop.approvals(reference)
    assert approval.decided_via == "link" and approval.comment == "Fine"
    # The page is the approver's confirmation; the requester hears by email.
    loop.run_jobs()
    (notification,) = loop.new_mail(1)
    assert recipients_of(notification) == [REQUESTER]
    assert loop.no_new_mail() == []
    again = client.get(links["reject"])
    assert again.status_code == 410
    assert "Already decided" in again.get_data(as_text=True)


# -- the confirmation page on its own (no mail servers: the link is read from the outbox) ----


@pytest.fixture
def waiting_case(app, make_case_type, make_case) -> str:
    """A case waiting for the manager's approval; its request is still in the outbox."""
    case_type_id = make_case_type(draft=approval_draft())
    return make_case(
        case_type_id, {"amount": "80.00", "category": "Meals", "manager_email": MANAGER}
    )


def _post(client, path: str, comment: str = ""):
    return client.post(path, data={"csrf_token": csrf_token(client, path), "comment": comment})


@both_databases
def test_the_page_decides_only_on_post_and_shows_where_the_case_went(app, client, waiting_case):
    path = link_path(app, waiting_case, "reject")
    for _ in range(2):  # a link scanner, then the approver
        page = client.get(path)
        assert page.status_code == 200
        assert load_case(app, waiting_case).stage == APPROVAL_STAGE
    html = page.get_data(as_text=True)
    assert f"Reject {waiting_case}?" in html and "80.00" in html and "Meals" in html
    assert "This stage needs a reason to reject" in html
    assert page.headers["Referrer-Policy"] == "no-referrer"
    done = _post(client, path, "Not a business meal")
    assert done.status_code == 200
    assert "is now in the stage <strong>Rejected</strong>" in done.get_data(as_text=True)
    case = load_case(app, waiting_case)
    assert case.stage == "rejected"
    assert [e.comment for e in case.events if e.to_stage == "rejected"] == ["Not a business meal"]


def test_a_rejection_without_a_reason_is_refused_next_to_the_comment(app, client, waiting_case):
    path = link_path(app, waiting_case, "reject")
    refused = _post(client, path, "   ")
    assert refused.status_code == 400
    assert "Give a reason for the rejection" in refused.get_data(as_text=True)
    assert load_case(app, waiting_case).stage == APPROVAL_STAGE
    assert client.get(path).status_code == 200  # the link still works


def test_a_post_without_the_csrf_token_decides_nothing(app, client, waiting_case):
    path = link_path(app, waiting_case, "approve")
    assert client.post(path, data={"comment": "ok"}).status_code == 400
    assert load_case(app, waiting_case).stage == APPROVAL_STAGE


def test_forged_and_unknown_links_are_not_found(app, client, waiting_case):
    path = link_path(app, waiting_case, "approve")
    cut = client.get(path[:-3])
    assert cut.status_code == 404 and "This link is not valid" in cut.get_data(as_text=True)
    with app.test_request_context():
        unknown = link_for("a" * 26, "approve")  # well signed, but no request has this token
    gone = client.get(urlsplit(unknown).path)
    assert gone.status_code == 404
    assert "This approval request is unknown" in gone.get_data(as_text=True)
    assert client.post(path[:-3], data={}).status_code in (400, 404)
    assert load_case(app, waiting_case).stage == APPROVAL_STAGE


def test_expired_and_moved_on_links_are_gone_and_say_why(app, client, waiting_case, make_user):
    path = link_path(app, waiting_case, "approve")
    token = csrf_token(client, path)  # the page was opened before the request expired
    with app.app_context():
        db.session.execute(update(Approval).values(expires_at=utcnow() - timedelta(minutes=1)))
        db.session.commit()
    expired = client.get(path)
    assert expired.status_code == 410
    assert "This link has expired" in expired.get_data(as_text=True)
    assert client.post(path, data={"csrf_token": token}).status_code == 410
    assert load_case(app, waiting_case).stage == APPROVAL_STAGE
    admin = make_user("admin")
    with app.app_context():
        case = find_case(waiting_case)
        apply_action(case, "approve", user=db.session.get(User, admin.id), channel="web")
        db.session.commit()
    moved = client.get(path)
    assert moved.status_code == 410
    assert "No decision needed any more" in moved.get_data(as_text=True)
    late = client.post(path, data={"csrf_token": token, "comment": "ok"})
    assert late.status_code == 410 and "has moved on" in late.get_data(as_text=True)
    assert [e.actor for e in load_case(app, waiting_case).events if e.to_stage == "payment"] == [
        admin.email
    ]


def test_posts_per_link_are_limited(app, client, waiting_case):
    path = link_path(app, waiting_case, "reject")
    token = csrf_token(client, path)
    codes = [
        client.post(path, data={"csrf_token": token, "comment": ""}).status_code
        for _ in range(POSTS_PER_WINDOW + 1)
    ]
    assert codes == [400] * POSTS_PER_WINDOW + [429]
    assert "Too many attempts" in client.post(path, data={"csrf_token": token}).get_data(
        as_text=True
    )
    assert load_case(app, waiting_case).stage == APPROVAL_STAGE
