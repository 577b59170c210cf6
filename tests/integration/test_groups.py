"""Work-queue groups: admin pages, routing stages to a group, My work, queue filter, API, config."""

from __future__ import annotations

import copy

import pytest
from sqlalchemy import select

from tests.fixtures.app import both_databases, csrf_token
from tests.fixtures.cases import EXPENSE_FIELDS, form_data, load_case
from webapp.casetypes.starters import STARTERS
from webapp.extensions import db
from webapp.models import Case, CaseType, WorkGroup
from webapp.services import cases as case_service
from webapp.services import casetypes as casetype_service
from webapp.services import groups as group_service
from webapp.services.configio import ConfigError, export_config, import_config


def _routed_to(group: str) -> dict:
    """The expense starter with its Payment stage in the queue of `group`."""
    draft = copy.deepcopy(STARTERS["expense-approval"].definition)
    payment = next(s for s in draft["stages"] if s["key"] == "payment")
    payment.update(assignee_kind="group", assignee=group)
    return draft


def _make_group(app, name, *members):
    with app.app_context():
        group = group_service.create_group(name)
        group_service.set_members(group, [m.email for m in members])
        db.session.commit()
        return group.id


def _to_payment(app, reference, manager):
    with app.app_context():
        case = case_service.find_case(reference)
        case_service.apply_action(case, "submit", user=None)
        case_service.apply_action(case, "approve", user=db.session.merge(manager))
        db.session.commit()


@both_databases
def test_a_stage_routed_to_a_group_reaches_its_members_only(
    app, make_user, make_case_type, make_case
):
    manager = make_user("worker", email="manager@example.com")
    alice = make_user("worker", email="alice@example.com")
    bob = make_user("worker", email="bob@example.com")
    group_id = _make_group(app, "Finance", alice)
    type_id = make_case_type(draft=_routed_to("finance"))  # names match without regard to case
    reference = make_case(type_id)
    _to_payment(app, reference, manager)

    case = load_case(app, reference)
    assert case.stage == "payment" and case.group_id == group_id and case.queue is None
    with app.app_context():
        mine = case_service.QueueFilter(status="open", mine_for=db.session.merge(alice))
        assert [c.reference for c in case_service.queue_page(mine).items] == [reference]
        others = case_service.QueueFilter(status="open", mine_for=db.session.merge(bob))
        assert case_service.queue_page(others).items == []
        by_group = case_service.QueueFilter(status="", group_id=group_id)
        assert [c.reference for c in case_service.queue_page(by_group).items] == [reference]

        case = case_service.find_case(reference)
        assert [a[0] for a in case_service.actions_for(case, db.session.merge(alice))] == [
            "mark_paid",
            "send_back",
        ]
        assert case_service.actions_for(case, db.session.merge(bob)) == []
        with pytest.raises(case_service.CaseError, match="not a member of it"):
            case_service.apply_action(case, "mark_paid", user=db.session.merge(bob))
        db.session.rollback()
        case_service.apply_action(case, "mark_paid", user=db.session.merge(alice))
        db.session.commit()
    assert load_case(app, reference).status == "resolved"


@both_databases
def test_publishing_or_saving_a_stage_with_an_unknown_group_is_refused(app, make_case_type):
    type_id = make_case_type(publish=False)
    with app.app_context():
        case_type = db.session.get(CaseType, type_id)
        casetype_service.save_draft(case_type, _routed_to("Nobody"))
        with pytest.raises(casetype_service.CaseTypeError) as refused:
            casetype_service.publish(case_type, None)
        assert "There is no work group 'Nobody' for 'Payment'" in str(refused.value)
        stage = next(s for s in case_type.draft["stages"] if s["key"] == "payment")
        with pytest.raises(casetype_service.CaseTypeError, match="no work group 'Nobody'"):
            casetype_service.update_stage(case_type, "payment", stage)


def test_admin_creates_renames_and_deletes_a_group(
    app, client, login_as, make_user, make_case_type
):
    make_user("worker", email="alice@example.com")
    make_user("designer", email="dana@example.com")
    login_as("admin")
    assert "No groups yet" in client.get("/admin/groups").get_data(as_text=True)

    page = client.get("/admin/groups/new").get_data(as_text=True)
    assert "alice@example.com" in page and "dana@example.com" not in page
    token = csrf_token(client, "/admin/groups/new")
    response = client.post(
        "/admin/groups/new",
        data={"csrf_token": token, "name": "Finance", "members": ["alice@example.com"]},
        follow_redirects=True,
    )
    html = response.get_data(as_text=True)
    assert "Created the group Finance." in html and "alice@example.com" in html

    taken = client.post(
        "/admin/groups/new", data={"csrf_token": token, "name": "finance", "members": []}
    )
    assert taken.status_code == 400
    assert "A group named &#39;Finance&#39; already exists" in taken.get_data(as_text=True)

    type_id = make_case_type(draft=_routed_to("Finance"))
    with app.app_context():
        group_id = db.session.scalar(select(WorkGroup.id))
    response = client.post(
        f"/admin/groups/{group_id}",
        data={"csrf_token": token, "name": "Accounts payable", "members": []},
        follow_redirects=True,
    )
    assert "Stages of Expense approval now route to it by its new name." in response.get_data(
        as_text=True
    )
    with app.app_context():
        case_type = db.session.get(CaseType, type_id)
        assert casetype_service.publication_problems(case_type) == []
        payment = case_type.latest_version.definition["stages"][2]
        assert payment["assignee"] == "Accounts payable"

    response = client.post(
        f"/admin/groups/{group_id}/delete", data={"csrf_token": token}, follow_redirects=True
    )
    assert "is the work queue of a stage in Expense approval" in response.get_data(as_text=True)
    with app.app_context():
        case_type = db.session.get(CaseType, type_id)
        casetype_service.save_draft(case_type, STARTERS["expense-approval"].definition)
        casetype_service.publish(case_type, None)
        db.session.commit()
    response = client.post(
        f"/admin/groups/{group_id}/delete", data={"csrf_token": token}, follow_redirects=True
    )
    assert "Deleted the group Accounts payable." in response.get_data(as_text=True)


def test_group_pages_are_for_admins_only(client, login_as, app, make_user):
    group_id = _make_group(app, "Finance")
    for role in ("worker", "designer"):
        login_as(role)
        for path in ("/admin/groups", "/admin/groups/new", f"/admin/groups/{group_id}"):
            assert client.get(path).status_code == 403
        token = csrf_token(client, "/")
        assert (
            client.post(f"/admin/groups/{group_id}/delete", data={"csrf_token": token}).status_code
            == 403
        )
        client.post("/logout", data={"csrf_token": token})


def test_designer_routes_a_stage_to_a_group_in_the_browser(
    app, client, login_as, make_user, make_case_type
):
    _make_group(app, "Finance")
    type_id = make_case_type(publish=False)
    login_as("designer")
    page = client.get(f"/case-types/{type_id}/stages/payment").get_data(as_text=True)
    assert "A work queue (group)" in page and ">Finance</option>" in page
    data = form_data(page)
    data.update(csrf_token=csrf_token(client, f"/case-types/{type_id}/stages/payment"))
    data.update(assignee_kind="group", assignee_group="Finance")
    response = client.post(f"/case-types/{type_id}/stages/payment", data=data)
    assert response.status_code == 302
    with app.app_context():
        stage = db.session.get(CaseType, type_id).draft["stages"][2]
        assert (stage["assignee_kind"], stage["assignee"]) == ("group", "Finance")

    data.update(assignee_group="Ghosts")
    response = client.post(f"/case-types/{type_id}/stages/payment", data=data)
    assert response.status_code == 400
    assert "There is no work group &#39;Ghosts&#39;" in response.get_data(as_text=True)


def test_queue_page_filters_by_group_and_shows_it(
    app, client, login_as, make_user, make_case_type, make_case
):
    manager = make_user("worker", email="manager@example.com")
    group_id = _make_group(app, "Finance")
    type_id = make_case_type(draft=_routed_to("Finance"))
    routed = make_case(type_id, subject="Hotel")
    make_case(type_id, subject="Taxi")
    _to_payment(app, routed, manager)
    login_as("worker")
    html = client.get(f"/cases/?group={group_id}").get_data(as_text=True)
    assert "Hotel" in html and "Taxi" not in html and "Finance group" in html
    html = client.get(f"/cases/{routed}").get_data(as_text=True)
    assert "In the queue of the group Finance." in html


@both_databases
def test_api_shows_the_group_and_filters_by_it(app, client, make_user, make_case_type, make_case):
    from webapp.services.users import issue_api_token

    manager = make_user("worker", email="manager@example.com")
    worker = make_user("worker")
    _make_group(app, "Finance", worker)
    type_id = make_case_type(draft=_routed_to("Finance"))
    reference = make_case(type_id, fields=EXPENSE_FIELDS)
    _to_payment(app, reference, manager)
    with app.app_context():
        _, token = issue_api_token(db.session.merge(worker), "test")
        db.session.commit()
    headers = {"Authorization": f"Bearer {token}"}
    case = client.get(f"/api/v1/cases/{reference}", headers=headers).get_json()
    assert case["group"] == "Finance" and case["queue"] is None
    listed = client.get("/api/v1/cases?group=finance&mine=1", headers=headers).get_json()
    assert [c["id"] for c in listed["cases"]] == [reference]
    missing = client.get("/api/v1/cases?group=Nobody", headers=headers)
    assert missing.status_code == 404
    assert missing.get_json()["message"] == "There is no work group 'Nobody'."


@both_databases
def test_groups_export_and_import_by_name_idempotently(app, make_user, make_case_type):
    alice = make_user("worker", email="alice@example.com")
    _make_group(app, "Finance", alice)
    make_case_type(draft=_routed_to("Finance"))
    with app.app_context():
        exported = export_config()
        assert exported["groups"] == [{"name": "Finance", "members": ["alice@example.com"]}]
        import yaml

        text = yaml.safe_dump(exported)
        report = import_config(text, "config.yaml")
        assert not report.changed and "group Finance: unchanged" in report.changes
        db.session.commit()

        exported["groups"].append({"name": "Purchasing", "members": ["alice@example.com"]})
        report = import_config(yaml.safe_dump(exported), "config.yaml")
        assert "group Purchasing: created, members set" in report.changes
        db.session.commit()
        assert [g.name for g in group_service.all_groups()] == ["Finance", "Purchasing"]
        assert not import_config(yaml.safe_dump(exported), "config.yaml").changed


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ([{"name": "Ops", "colour": "red"}], "config.yaml: groups[0].colour: unknown key"),
        ([{"name": ""}], "config.yaml: groups[0].name: give the group a name."),
        ([{"name": "Ops"}, {"name": "ops"}], "config.yaml: groups[1].name: 'ops' appears twice"),
        ([{"name": "Ops", "members": ["nobody@example.com"]}], "there is no user nobody@"),
        ([{"name": "Ops", "members": "a@example.com"}], "groups[0].members: must be a list"),
        ({"name": "Ops"}, "config.yaml: groups: must be a list of groups."),
    ],
)
def test_group_import_names_the_file_and_key(app, groups, message):
    import yaml

    with app.app_context():
        with pytest.raises(ConfigError) as refused:
            import_config(yaml.safe_dump({"groups": groups}), "config.yaml")
        assert message in str(refused.value)


def test_case_type_import_refuses_an_unknown_group(app):
    import yaml

    item = {"name": "Expenses", "prefix": "EXP", **_routed_to("Ghosts")}
    with app.app_context():
        with pytest.raises(ConfigError) as refused:
            import_config(yaml.safe_dump({"case_types": [item]}), "config.yaml")
        assert (
            "config.yaml: case_types[0].stages[2].assignee: There is no work group 'Ghosts'"
            in str(refused.value)
        )
        assert db.session.scalar(select(Case)) is None
