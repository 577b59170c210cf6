"""Case numbers without gaps or duplicates, and one winner among concurrent actions."""

from __future__ import annotations

import threading

from sqlalchemy import select

from tests.fixtures.app import both_databases
from tests.fixtures.cases import EXPENSE_FIELDS, load_case
from webapp.extensions import db
from webapp.models import Case, CaseEvent, CaseType
from webapp.services import cases as case_service

THREADS = 8
CASES_PER_THREAD = 5


def _run_together(count: int, work) -> list[object]:
    """Run work(index) in `count` threads released at the same moment; their results."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@both_databases
def test_concurrent_cases_get_consecutive_numbers(app, make_case_type):
    type_id = make_case_type()

    def open_cases(_index: int) -> list[str]:
        references = []
        with app.app_context():
            for _ in range(CASES_PER_THREAD):
                case_type = db.session.get(CaseType, type_id)
                case = case_service.open_case(
                    case_type, dict(EXPENSE_FIELDS), subject="Load", requester="", user=None
                )
                db.session.commit()
                references.append(case.reference)
        return references

    results = _run_together(THREADS, open_cases)
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors
    references = sorted(ref for refs in results for ref in refs)  # type: ignore[union-attr]
    expected = sorted(f"EXP-{n}" for n in range(1001, 1001 + THREADS * CASES_PER_THREAD))
    assert references == expected


@both_databases
def test_a_rolled_back_case_gives_its_number_back(app, make_case_type, make_case):
    type_id = make_case_type()
    with app.app_context():
        case_type = db.session.get(CaseType, type_id)
        case = case_service.open_case(
            case_type, dict(EXPENSE_FIELDS), subject="Abandoned", requester="", user=None
        )
        assert case.reference == "EXP-1001"
        db.session.rollback()
    assert make_case(type_id) == "EXP-1001"
    assert make_case(type_id) == "EXP-1002"


@both_databases
def test_two_concurrent_actions_on_one_case_exactly_one_wins(app, make_case_type, make_case):
    type_id = make_case_type()
    reference = make_case(type_id)
    sessions_loaded = threading.Barrier(2)

    def act(index: int) -> str:
        action = ("submit", "withdraw")[index]
        with app.app_context():
            case = db.session.scalar(select(Case).where(Case.reference == reference))
            _ = (case.version, case.case_type)
            sessions_loaded.wait()  # both have read the same version of the case
            try:
                case_service.apply_action(case, action, user=None, channel="system")
                db.session.commit()
            except case_service.AlreadyProcessed as exc:
                db.session.rollback()
                return str(exc)
        return "applied " + action

    results = _run_together(2, act)
    applied = [r for r in results if str(r).startswith("applied")]
    refused = [r for r in results if not str(r).startswith("applied")]
    assert len(applied) == 1, results
    assert refused == [f"{reference} was already processed by someone else; reload to see it."]
    case = load_case(app, reference)
    assert (
        case.stage
        == {"applied submit": "manager_approval", "applied withdraw": "withdrawn"}[applied[0]]
    )
    with app.app_context():
        actions = db.session.scalars(
            select(CaseEvent.action).where(CaseEvent.case_id == case.id, CaseEvent.kind == "action")
        ).all()
    assert len(actions) == 1


@both_databases
def test_two_designers_publishing_at_once_make_one_version(app, make_case_type):
    from webapp.services import casetypes as casetype_service

    type_id = make_case_type(publish=False)
    both_loaded = threading.Barrier(2)

    def publish(_index: int) -> str:
        with app.app_context():
            case_type = db.session.get(CaseType, type_id)
            _ = (case_type.versions, case_type.draft)
            both_loaded.wait()  # both have seen a case type without versions
            try:
                version = casetype_service.publish(case_type, None)
                db.session.commit()
            except casetype_service.CaseTypeError as exc:
                db.session.rollback()
                return str(exc)
            return f"published {version.number}"

    results = sorted(str(r) for r in _run_together(2, publish))
    assert results == ["Version 1 already has this definition.", "published 1"], results
