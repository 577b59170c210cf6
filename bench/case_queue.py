"""The case queue with 100,000 cases: p95 server time of the first and a deep page.

    python bench/case_queue.py [--cases 100000] [--runs 60]

Runs on SQLite (a temporary file) and on PostgreSQL when BENCH_POSTGRES_URL or
TEST_POSTGRES_URL answers (in a schema of its own, dropped afterwards). For each it prints the
p95 of the whole request as the app serves it (routing, session, queries, template) and, as the
building-block baseline, the p95 of the raw SQL of the page's query on the same data.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import psycopg
from sqlalchemy import insert, select, text, tuple_

from webapp import create_app
from webapp.extensions import db
from webapp.models import Case, CaseCounter
from webapp.services import cases as case_service
from webapp.services.casetypes import create_case_type, publish
from webapp.services.users import create_user

PASSWORD = "benchmark password"  # noqa: S105 - a throwaway user in a throwaway database
BATCH = 5000


def p95(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=20)[18] * 1000


@contextmanager
def databases(only: str) -> Iterator[list[tuple[str, str]]]:
    """(label, SQLAlchemy URL) for each database to measure."""
    with tempfile.TemporaryDirectory() as folder:
        urls = []
        if only in ("all", "sqlite"):
            urls.append(("SQLite", f"sqlite:///{folder}/bench.db"))
        base = os.environ.get("BENCH_POSTGRES_URL") or os.environ.get("TEST_POSTGRES_URL")
        schema = f"bench_{secrets.token_hex(4)}"
        postgres = False
        if only in ("all", "postgres") and base:
            try:
                with psycopg.connect(base, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f"CREATE SCHEMA {schema}")
                postgres = True
                separator = "&" if "?" in base else "?"
                urls.append(("PostgreSQL", f"{base}{separator}options=-csearch_path%3D{schema}"))
            except psycopg.Error as exc:
                print(f"PostgreSQL skipped: {exc}".strip())
        try:
            yield urls
        finally:
            if postgres and base:
                with psycopg.connect(base, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")


def seed(count: int) -> tuple[int, int]:
    """Two published case types and `count` cases spread over stages, statuses and time.

    Returns the id of the first case type and of a worker user.
    """
    admin = create_user("admin@bench.test", PASSWORD, "admin")
    workers = [create_user(f"worker{i}@bench.test", PASSWORD, "worker") for i in range(5)]
    types = []
    for name, prefix, starter in (
        ("Expense approval", "EXP", "expense-approval"),
        ("Purchase request", "PR", "purchase-request"),
    ):
        case_type = create_case_type(name, prefix, starter=starter)
        version = publish(case_type, admin)
        types.append((case_type, version))
    db.session.commit()
    stages = {
        "EXP": [
            ("submission", "open"),
            ("manager_approval", "open"),
            ("payment", "open"),
            ("completed", "resolved"),
            ("rejected", "resolved"),
        ],
        "PR": [
            ("request", "open"),
            ("budget_approval", "open"),
            ("ordering", "open"),
            ("completed", "resolved"),
            ("withdrawn", "resolved"),
        ],
    }
    rng = random.Random(42)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    numbers = {case_type.id: 1001 for case_type, _ in types}
    rows = []
    for index in range(count):
        case_type, version = types[index % 2 if index % 5 else 0]  # 60% expenses
        stage, status = rng.choice(stages[case_type.prefix])
        number = numbers[case_type.id]
        numbers[case_type.id] += 1
        created = start + timedelta(minutes=index * 3 + rng.randint(0, 2))
        updated = created + timedelta(hours=rng.randint(0, 400))
        rows.append(
            {
                "case_type_id": case_type.id,
                "version_id": version.id,
                "number": number,
                "reference": f"{case_type.prefix}-{number}",
                "subject": f"Request {index} for {rng.choice(['travel', 'a laptop', 'books'])}",
                "requester": f"person{rng.randint(1, 2000)}@example.com",
                "stage": stage,
                "status": status,
                "resolution": None,
                "fields": {"amount": str(rng.randint(10, 5000))},
                "approvals": [],
                "approvers": [],
                "assignee_id": rng.choice(workers).id if rng.random() < 0.3 else None,
                "queue": "worker" if stage in ("payment", "ordering") else None,
                "created_at": created,
                "updated_at": updated,
                "stage_entered_at": updated,
                "sla_deadline_at": updated + timedelta(hours=72) if status == "open" else None,
                "row_version": 1,
            }
        )
        if len(rows) == BATCH:
            db.session.execute(insert(Case), rows)
            rows = []
    if rows:
        db.session.execute(insert(Case), rows)
    for type_id, next_number in numbers.items():
        db.session.get(CaseCounter, type_id).next_number = next_number  # type: ignore[union-attr]
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE cases"))
    else:
        with db.engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return types[0][0].id, workers[0].id


def timed(runs: int, call: Callable[[], object]) -> list[float]:
    for _ in range(5):  # warm caches and connection pool
        call()
    samples = []
    for _ in range(runs):
        began = time.perf_counter()
        call()
        samples.append(time.perf_counter() - began)
    return samples


def measure(label: str, url: str, count: int, runs: int) -> None:
    instance = tempfile.mkdtemp(prefix="casemail-bench-")
    os.environ["CASEMAIL_INSTANCE_PATH"] = instance
    app = create_app(
        {
            "CASEMAIL_ENV": "testing",
            "SECRET_KEY": "bench",
            "SQLALCHEMY_DATABASE_URI": url,
            "WTF_CSRF_ENABLED": False,
            "CASEMAIL_DEV_SANDBOX": False,
        }
    )
    with app.app_context():
        db.create_all()
        began = time.perf_counter()
        type_id, _ = seed(count)
        print(f"\n{label}: seeded {count:,} cases in {time.perf_counter() - began:.1f} s")
        filters = case_service.QueueFilter(case_type_id=type_id, status="open", sort="updated")
        statement = case_service._queue_statement(filters, datetime.now(UTC))
        matching = db.session.scalar(select(text("count(*)")).select_from(statement.subquery()))
        # The cursor of a page half way through the matching cases.
        middle = db.session.execute(
            statement.with_only_columns(Case.updated_at, Case.id)
            .order_by(Case.updated_at.desc(), Case.id.desc())
            .offset(matching // 2)
            .limit(1)
        ).one()
        cursor = f"{case_service._micros(middle[0])}_{middle[1]}"
        db.session.remove()

    client = app.test_client()
    response = client.post("/login", data={"email": "admin@bench.test", "password": PASSWORD})
    assert response.status_code == 302, response.status_code
    first_url = f"/cases/?type={type_id}&status=open&sort=updated"
    deep_url = f"{first_url}&after={cursor}"
    for url_ in (first_url, deep_url):
        page = client.get(url_)
        assert page.status_code == 200 and b"Next page" in page.data, page.status_code

    def raw(after: tuple[datetime, int] | None) -> Callable[[], object]:
        def run() -> object:
            with app.app_context():
                stmt = statement
                if after is not None:
                    stmt = stmt.where(tuple_(Case.updated_at, Case.id) < after)
                stmt = stmt.order_by(Case.updated_at.desc(), Case.id.desc()).limit(26)
                with db.engine.connect() as conn:
                    return conn.execute(stmt).all()

        return run

    results = {
        "first page, server": timed(runs, lambda: client.get(first_url)),
        "deep page, server": timed(runs, lambda: client.get(deep_url)),
        "first page, raw SQL": timed(runs, raw(None)),
        "deep page, raw SQL": timed(runs, raw((middle[0], middle[1]))),
    }
    print(f"{label}: {matching:,} open expense cases match; deep page = half way through")
    for name, samples in results.items():
        print(
            f"  {name:<22} p95 {p95(samples):7.2f} ms   median "
            f"{statistics.median(samples) * 1000:7.2f} ms"
        )
    ratio = p95(results["deep page, server"]) / p95(results["deep page, raw SQL"])
    print(f"  server / raw SQL (deep page, p95): {ratio:.1f}x")
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--database", choices=("all", "sqlite", "postgres"), default="all")
    args = parser.parse_args()
    print(f"Queue benchmark: {args.cases:,} cases, {args.runs} timed requests each")
    with databases(args.database) as urls:
        for label, url in urls:
            measure(label, url, args.cases, args.runs)


if __name__ == "__main__":
    main()
