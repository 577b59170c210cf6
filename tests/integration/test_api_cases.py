"""The cases API: list, get, create, act, case types; JSON errors with proper status codes."""

from __future__ import annotations

import pytest

from tests.fixtures.app import both_databases
from tests.fixtures.cases import EXPENSE_FIELDS
from webapp.extensions import db
from webapp.models import User
from webapp.services.users import issue_api_token


@pytest.fixture
def api(app, make_user):
    """api(role="worker", email=None) -> (headers, user) for a fresh token."""

    def make(role: str = "worker", email: str | None = None):
        user = make_user(role, email=email)
        with app.app_context():
            _, token = issue_api_token(db.session.get(User, user.id), "tests")
            db.session.commit()
        return {"Authorization": f"Bearer {token}"}, user

    return make


@both_databases
def test_create_get_and_act_on_a_case(client, api, make_case_type):
    make_case_type()
    worker, _ = api("worker")
    manager, _ = api("worker", email="manager@example.com")

    response = client.post(
        "/api/v1/cases",
        headers=worker,
        json={"case_type": "EXP", "subject": "Hotel", "fields": EXPENSE_FIELDS},
    )
    assert response.status_code == 201, response.json
    assert response.headers["Location"] == "/api/v1/cases/EXP-1001"
    assert response.json["stage"] == "submission"
    assert response.json["events"][0]["channel"] == "api"

    response = client.post(
        "/api/v1/cases/EXP-1001/actions/submit", headers=worker, json={"comment": "please"}
    )
    assert response.status_code == 200
    assert response.json["to_stage"] == "manager_approval"
    version = response.json["case"]["row_version"]

    response = client.post("/api/v1/cases/EXP-1001/actions/reject", headers=manager, json={})
    assert response.status_code == 422
    assert response.json == {"error": "refused", "message": "Give a reason for the rejection."}

    response = client.post(
        "/api/v1/cases/EXP-1001/actions/approve", headers=manager, json={"row_version": version - 1}
    )
    assert response.status_code == 409
    assert response.json["error"] == "already_processed"

    response = client.post(
        "/api/v1/cases/EXP-1001/actions/approve", headers=manager, json={"row_version": version}
    )
    assert response.status_code == 200 and response.json["case"]["stage_name"] == "Payment"

    case = client.get("/api/v1/cases/EXP-1001", headers=worker).json
    assert [e["to"] for e in case["events"]] == ["submission", "manager_approval", "payment"]
    assert case["events"][1]["comment"] == "please"

    listed = client.get("/api/v1/cases?case_type=EXP&stage=payment", headers=worker).json
    assert [c["id"] for c in listed["cases"]] == ["EXP-1001"]
    assert client.get("/api/v1/cases?stage=submission", headers=worker).json["cases"] == []


def test_listing_pages_with_a_cursor(client, api, make_case_type, make_case):
    type_id = make_case_type()
    references = [make_case(type_id, subject=f"Case {n}") for n in range(5)]
    worker, _ = api("worker")
    seen = []
    after = ""
    for _ in range(10):
        page = client.get(f"/api/v1/cases?limit=2&after={after}", headers=worker).json
        seen += [c["id"] for c in page["cases"]]
        if not page["next_cursor"]:
            break
        after = page["next_cursor"]
    assert seen == list(reversed(references))


def test_errors_are_json_with_status_codes(client, api, make_case_type):
    make_case_type()
    worker, _ = api("worker")
    designer, _ = api("designer")
    assert client.get("/api/v1/cases").status_code == 401
    response = client.get("/api/v1/cases/EXP-9999", headers=worker)
    assert response.status_code == 404 and response.json["error"] == "not_found"
    response = client.get("/api/v1/cases", headers=designer)
    assert response.status_code == 403
    assert response.json["message"] == "Only workers and admins work cases."
    response = client.post("/api/v1/cases", headers=worker, data="nope", content_type="text/plain")
    assert response.status_code == 400 and response.json["message"] == "Send a JSON object."
    response = client.post(
        "/api/v1/cases",
        headers=worker,
        json={"case_type": "EXP", "subject": "x", "fields": {**EXPENSE_FIELDS, "amount": "lots"}},
    )
    assert response.status_code == 422
    assert response.json["fields"] == {
        "amount": "Enter an amount such as 120 or 120.50 (no currency sign)."
    }
    response = client.post(
        "/api/v1/cases",
        headers=worker,
        json={"case_type": "EXP", "subject": "x", "fields": {"colour": "red"}},
    )
    assert response.status_code == 422 and response.json["message"] == "Unknown fields: colour."
    response = client.post("/api/v1/cases", headers=worker, json={"case_type": "NOPE"})
    assert response.status_code == 404
    response = client.get("/api/v1/cases?limit=1000", headers=worker)
    assert response.status_code == 400


def test_case_types_are_listed_for_any_role(client, api, make_case_type):
    make_case_type()
    make_case_type(name="Purchase request", prefix="PR", starter="purchase-request", publish=False)
    designer, _ = api("designer")
    types = client.get("/api/v1/case-types", headers=designer).json["case_types"]
    assert [(t["name"], t["version"]) for t in types] == [
        ("Expense approval", 1),
        ("Purchase request", None),
    ]
    assert types[0]["stages"][0] == {"key": "submission", "name": "Submission", "kind": "work"}
    assert {
        "name": "category",
        "label": "Category",
        "type": "choice",
        "required": True,
        "options": ["Travel", "Meals", "Equipment", "Other"],
    } in types[0]["fields"]


def test_a_requester_must_be_one_email_address(client, api, make_case_type):
    make_case_type()
    worker, _ = api()
    response = client.post(
        "/api/v1/cases",
        json={
            "case_type": "EXP",
            "subject": "Taxi",
            "requester": "a@example.com, b@example.com",
            "fields": EXPENSE_FIELDS,
        },
        headers=worker,
    )
    assert response.status_code == 422
    assert response.get_json()["fields"] == {
        "requester": "Enter the requester's email address, such as name@example.com."
    }
