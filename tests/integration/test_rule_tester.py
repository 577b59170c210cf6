"""The rule tester predicts what ingesting a message would do, refusals included."""

from __future__ import annotations

import io

from sqlalchemy import func, select

from tests.fixtures.app import csrf_token
from tests.support.inbound import message
from webapp.extensions import db
from webapp.models import Case, InboundMessage, ServiceEmailRule
from webapp.services import rules as rule_service


def _rule(app, type_id: int) -> int:
    with app.app_context():
        data = rule_service.RuleData(
            name="Expenses by email",
            action="create_case",
            case_type_id=type_id,
            mappings=[{"field": "amount", "source": "body_key", "value": "Amount"}],
        )
        rule = rule_service.save_rule(None, data)
        db.session.commit()
        return rule.id


def _upload(client, rule_id: int, raw: bytes):
    token = csrf_token(client, "/admin/rules/test")
    return client.post(
        "/admin/rules/test",
        data={"csrf_token": token, "rule_id": str(rule_id), "message": (io.BytesIO(raw), "m.eml")},
        content_type="multipart/form-data",
    )


def _test_message(client, rule_id: int, raw: bytes) -> str:
    response = _upload(client, rule_id, raw)
    assert response.status_code == 200
    return response.get_data(as_text=True)


def test_the_tester_says_a_sender_no_case_can_name_is_quarantined(
    app, client, login_as, make_case_type
):
    login_as("admin")
    rule_id = _rule(app, make_case_type())
    for sender, reason in (
        ("ops@intranet", "ops@intranet is not a full email address (such as name@example.com)"),
        ("a" * 320 + "@example.com", "is longer than 320 characters"),
    ):
        page = _test_message(client, rule_id, message(sender=sender))
        assert "Quarantine" in page and "Opens a new case." not in page
        assert f"The sender&#39;s address {reason}, so no case can name it as requester." in page
    page = _test_message(client, rule_id, message())
    assert "Opens a new case." in page
    with app.app_context():
        for model in (Case, InboundMessage):
            assert db.session.scalar(select(func.count()).select_from(model)) == 0
        assert db.session.scalar(select(func.count()).select_from(ServiceEmailRule)) == 1


def test_a_file_larger_than_the_tester_reads_is_refused_without_a_made_up_size(
    app, client, login_as, make_case_type
):
    login_as("admin")
    rule_id = _rule(app, make_case_type())
    response = _upload(client, rule_id, message(body="x" * (26 * 1024 * 1024)))
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert "The file is larger than 25 MB, the most the tester reads." in page
    assert "25.0 MB" not in page
