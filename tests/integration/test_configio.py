"""`flask config export` / `flask config import`: round trip, idempotence, ${ENV}, errors."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import func, select

from tests.fixtures.app import both_databases
from webapp.extensions import db
from webapp.models import CaseType, CaseTypeVersion

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
