"""GET shows what a signed link would decide; only the POST of the form (with its CSRF token)
decides, so mail scanners and link previews that open the link change nothing.

The pages carry the reply token in their address: they are never cached and never send a
Referer, and the token is never written to a log by this code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from flask import Response, current_app, render_template, url_for
from redis.exceptions import RedisError

from webapp.approvals import bp
from webapp.approvals.forms import DecisionForm
from webapp.casetypes.definition import Definition, StageDef
from webapp.extensions import db, get_redis
from webapp.models import Approval, ApprovalStatus, Case
from webapp.models.types import utcnow
from webapp.services import approvals as approval_service
from webapp.services.approval_links import APPROVE, REJECT, LinkError, link_for, read_link
from webapp.services.cases import definition_of

# Deciding takes one POST; a few more are a missing reason or a double click. More than this
# per link and window is a client repeating itself, not a person.
POSTS_PER_WINDOW = 10
WINDOW_SECONDS = 600

ReplyPage = tuple[str, int]


@dataclass(frozen=True)
class _Link:
    token: str
    decision: str
    approval: Approval

    @property
    def case(self) -> Case:
        return self.approval.case

    @property
    def definition(self) -> Definition:
        return definition_of(self.case)

    @property
    def stage(self) -> StageDef | None:
        try:
            return self.definition.stage(self.approval.stage)
        except KeyError:
            return None

    @property
    def reason_required(self) -> bool:
        stage = self.stage
        return self.decision == REJECT and stage is not None and stage.reason_required


@bp.after_request
def _private(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


@bp.get("/<signed>")
def confirm(signed: str) -> ReplyPage:
    link, refusal = _open(signed)
    if link is None:
        return refusal
    return _confirm_page(link, DecisionForm()), 200


@bp.post("/<signed>")
def decide(signed: str) -> ReplyPage:
    link, refusal = _open(signed)
    if link is None:
        return refusal
    if _too_many_posts(signed):
        return _refused(
            429,
            "Too many attempts",
            "This link was submitted too often in a short time. Wait ten minutes and try again.",
            None,
        )
    form = DecisionForm()
    if not form.validate_on_submit():
        return _confirm_page(link, form), 400
    comment = (form.comment.data or "").strip()
    if link.reason_required and not comment:
        form.comment.errors = ["Give a reason for the rejection: the requester will see it."]
        return _confirm_page(link, form), 400
    try:
        message = approval_service.decide_by_link(link.approval, link.decision, comment)
    except approval_service.ApprovalError as exc:
        db.session.rollback()
        # Someone may have decided in the meantime: then the link itself is used up.
        again, refusal = _open(signed)
        if again is None:
            return refusal
        form.comment.errors = [str(exc)]
        return _confirm_page(again, form), 409
    db.session.commit()
    case = db.session.get(Case, link.approval.case_id)
    assert case is not None  # the decision was just committed on it
    return render_template(
        "approvals/done.html",
        case=case,
        decision=link.decision,
        message=message,
        stage_name=_stage_name(case),
    ), 200


def _open(signed: str) -> tuple[_Link | None, ReplyPage]:
    """The link's approval if it can still decide; else the page that says why not."""
    try:
        token, decision = read_link(signed)
    except LinkError as exc:
        return None, _refused(
            404,
            "This link is not valid",
            f"{exc} Open the link from the approval email again, or reply to that email "
            "with APPROVE or REJECT on the first line.",
            None,
        )
    approval = approval_service.find_by_token(token)
    if approval is None:
        return None, _refused(
            404,
            "This approval request is unknown",
            "No approval request matches this link. It may belong to another Casemail "
            "installation, or the case was deleted.",
            None,
        )
    reason = approval_service.refusal_for_link(approval)
    if reason:
        return None, _refused(410, _refusal_title(approval), reason, approval)
    return _Link(token, decision, approval), ("", 200)


def _refusal_title(approval: Approval) -> str:
    if approval.status in (ApprovalStatus.APPROVED.value, ApprovalStatus.REJECTED.value):
        return "Already decided"
    if approval.status == ApprovalStatus.SUPERSEDED.value:
        return "No decision needed any more"
    if approval.expires_at <= utcnow():
        return "This link has expired"
    return "This link can no longer decide"


def _refused(status: int, title: str, text: str, approval: Approval | None) -> ReplyPage:
    return render_template(
        "approvals/refused.html",
        status=status,
        title=title,
        text=text,
        approval=approval,
        case=approval.case if approval is not None else None,
    ), status


def _confirm_page(link: _Link, form: DecisionForm) -> str:
    case = link.case
    definition = link.definition
    other = APPROVE if link.decision == REJECT else REJECT
    return render_template(
        "approvals/confirm.html",
        form=form,
        case=case,
        approval=link.approval,
        decision=link.decision,
        stage_name=link.stage.name if link.stage else link.approval.stage,
        fields=[(f.label, (case.fields or {}).get(f.name, "")) for f in definition.fields],
        reason_required=link.reason_required,
        other_decision=other,
        # The same page for the other decision, on the host this one was opened on.
        other_url=url_for(".confirm", signed=link_for(link.token, other).rsplit("/", 1)[1]),
    )


def _stage_name(case: Case) -> str:
    try:
        return definition_of(case).stage(case.stage).name
    except KeyError:
        return case.stage


def _too_many_posts(signed: str) -> bool:
    """Count a POST on this link; whether it is over the limit of the window."""
    # The key is a digest: Redis never holds the link itself.
    key = "casemail:approval-link-posts:" + hashlib.sha256(signed.encode()).hexdigest()[:32]
    try:
        with get_redis().pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, WINDOW_SECONDS, nx=True)
            count, _ = pipe.execute()
    except RedisError:
        # The signature and the single-use token protect the decision; the limit only slows
        # a client that repeats itself, so an unreachable Redis does not lock approvers out.
        current_app.logger.warning("approval link rate limit unavailable (Redis)")
        return False
    return int(count) > POSTS_PER_WINDOW
