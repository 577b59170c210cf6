"""The case queue and "My work": filters, sorting, cursor pages, overdue flags."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select, update

from tests.fixtures.app import both_databases
from webapp.extensions import db
from webapp.models import Case, User
from webapp.models.types import utcnow
from webapp.services.cases import apply_action


def _references(html: str) -> list[str]:
    return re.findall(r'<a href="/cases/([A-Z]+-\d+)">', html)


def _act(app, reference, action, user=None):
    with app.app_context():
        case = db.session.scalar(select(Case).where(Case.reference == reference))
        apply_action(case, action, user=db.session.get(User, user.id) if user else None)
        db.session.commit()


@both_databases
def test_queue_pages_filters_and_sorts(app, client, login_as, make_case_type, make_case):
    expenses = make_case_type()
    purchases = make_case_type(name="Purchase request", prefix="PR", starter="purchase-request")
    refs = [make_case(expenses, subject=f"Expense {n}") for n in range(30)]
    pr = make_case(
        purchases,
        subject="New laptop",
        fields={
            "item": "Laptop",
            "quantity": "1",
            "estimated_cost": "1500",
            "justification": "old",
        },
    )
    _act(app, refs[0], "withdraw")
    worker = login_as("worker")

    first = client.get("/cases/").get_data(as_text=True)
    assert _references(first) == [pr, *reversed(refs[6:30])][:25]
    assert "30 cases" in first or "30 case" in first
    cursor = re.search(r'href="/cases/\?after=([0-9_]+)"', first).group(1)
    second = client.get(f"/cases/?after={cursor}").get_data(as_text=True)
    assert _references(second) == list(reversed(refs[1:6]))
    assert "First page" in second

    html = client.get("/cases/?status=resolved").get_data(as_text=True)
    assert _references(html) == [refs[0]]
    html = client.get(f"/cases/?type={purchases}").get_data(as_text=True)
    assert _references(html) == [pr]
    html = client.get(f"/cases/?type={expenses}&stage=submission&sort=oldest").get_data(
        as_text=True
    )
    assert _references(html)[:2] == [refs[1], refs[2]]
    html = client.get("/cases/?q=laptop").get_data(as_text=True)
    assert _references(html) == [pr]
    html = client.get(f"/cases/?q={refs[3].lower()}").get_data(as_text=True)
    assert _references(html) == [refs[3]]
    html = client.get("/cases/?q=nothing+like+this").get_data(as_text=True)
    assert "No cases match" in html
    html = client.get("/cases/?q=%25").get_data(as_text=True)  # a literal %, not a wildcard
    assert "No cases match" in html

    with app.app_context():
        db.session.execute(
            update(Case).where(Case.reference == refs[7]).values(assignee_id=worker.id)
        )
        db.session.commit()
    for value in (str(worker.id), "me"):
        html = client.get(f"/cases/?assignee={value}").get_data(as_text=True)
        assert _references(html) == [refs[7]]


@both_databases
def test_my_work_and_overdue(app, client, login_as, make_user, make_case_type, make_case):
    type_id = make_case_type()
    manager = make_user("worker", email="manager@example.com")
    waiting_for_manager = make_case(type_id, subject="Needs the manager")
    _act(app, waiting_for_manager, "submit")
    in_payment = make_case(type_id, subject="To pay")
    _act(app, in_payment, "submit")
    _act(app, in_payment, "approve", manager)
    unassigned = make_case(type_id, subject="Just opened")
    with app.app_context():
        db.session.execute(
            update(Case)
            .where(Case.reference == waiting_for_manager)
            .values(sla_deadline_at=utcnow() - timedelta(hours=1))
        )
        db.session.commit()

    from tests.fixtures.app import AuthActions

    auth = AuthActions(client)
    auth.login(manager.email)
    html = client.get("/cases/mine").get_data(as_text=True)
    # The manager approves the first, the second waits in the workers' queue, the third is
    # unassigned work any worker may take.
    assert set(_references(html)) == {waiting_for_manager, in_payment, unassigned}
    html = client.get("/cases/?overdue=1").get_data(as_text=True)
    assert _references(html) == [waiting_for_manager]
    assert "Overdue" in html
    dashboard = client.get("/").get_data(as_text=True)
    assert "1 overdue." in dashboard

    _act(app, unassigned, "withdraw")
    _act(app, in_payment, "mark_paid")
    auth.logout()
    login_as("worker")
    html = client.get("/cases/mine").get_data(as_text=True)
    assert "Nothing waits for you" in html
