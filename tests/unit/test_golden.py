"""Golden tests: every .eml under tests/golden has a .json beside it with what we read from it.

Adding a pair adds a test. To draft the .json of a new message, run this file with
CASEMAIL_GOLDEN_UPDATE=1 — then read the draft before keeping it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from webapp.mail.correlate import Lookups, correlate
from webapp.mail.filters import Limits, screen
from webapp.mail.parse import ParsedMessage
from webapp.mail.reply import decision_from_message

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
FILES = sorted(GOLDEN.rglob("*.eml"))
UPDATE = os.environ.get("CASEMAIL_GOLDEN_UPDATE") == "1"

# The case store the golden messages are correlated against.
TOKENS = {"mnqxgzlnmfuwyllhn5wgizloee": "EXP-1042"}
MESSAGE_IDS = {
    "<approval-EXP-1042.7@casemail.test>": "EXP-1042",
    "<ack-EXP-1042.2@casemail.test>": "EXP-1042",
    "<ack-EXP-1043.1@casemail.test>": "EXP-1043",
}
CASE_IDS = {"EXP-1042", "EXP-1043"}


def _by_message_ids(ids: Sequence[str]) -> Mapping[str, str]:
    return {i: MESSAGE_IDS[i] for i in ids if i in MESSAGE_IDS}


LOOKUPS: Lookups[str] = Lookups(
    by_reply_token=TOKENS.get,
    by_message_ids=_by_message_ids,
    by_case_id=lambda case_id: case_id if case_id in CASE_IDS else None,
)


def describe(raw: bytes) -> dict[str, object]:
    """Everything the mail layer makes of `raw`, as plain JSON values."""
    screened = screen(raw, Limits(max_size=1024 * 1024))
    outcome = screened.outcome
    result: dict[str, object] = {
        "filters": {
            "action": outcome.action,
            "fired": [list(item) for item in outcome.fired],
            "original_message_id": outcome.original_message_id,
        }
    }
    message = screened.message
    if message is None:
        return result
    result["parsed"] = _parsed(message)
    correlation = correlate(message, LOOKUPS)
    result["correlation"] = {
        "method": correlation.method,
        "key": correlation.key,
        "case": correlation.case,
        "description": correlation.description,
    }
    decision = decision_from_message(message)
    result["reply"] = {
        "verdict": decision.verdict,
        "word": decision.word,
        "comment": decision.comment,
    }
    return result


def _parsed(message: ParsedMessage) -> dict[str, object]:
    return {
        "message_id": message.message_id,
        "in_reply_to": message.in_reply_to,
        "references": list(message.references),
        "subject": message.subject,
        "from": [list(pair) for pair in message.from_addresses],
        "from_well_formed": message.from_well_formed,
        "sender": message.sender,
        "to": [list(pair) for pair in message.to],
        "cc": [list(pair) for pair in message.cc],
        "reply_to": [list(pair) for pair in message.reply_to],
        "delivered_to": list(message.delivered_to),
        "date": message.date.isoformat() if message.date else None,
        "automatic_headers": [list(pair) for pair in message.automatic_headers],
        "content_type": message.content_type,
        "report_type": message.report_type,
        "text": message.text,
        "text_from_html": message.text_from_html,
        "html_length": len(message.html),
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": hashlib.sha256(a.content).hexdigest()[:16],
                "content_id": a.content_id,
                "disposition": a.disposition,
            }
            for a in message.attachments
        ],
        "embedded_message_ids": [e.message_id for e in message.embedded],
        "delivery_status": [
            [s.recipient, s.action, s.status, s.diagnostic] for s in message.delivery_status
        ],
        "part_count": message.part_count,
        "depth": message.depth,
        "notes": list(message.notes),
    }


def test_the_golden_set_is_large_enough():
    assert len([f for f in FILES if "broken" not in f.parts]) >= 25
    assert len([f for f in FILES if "broken" in f.parts]) >= 5


@pytest.mark.parametrize("path", FILES, ids=[str(f.relative_to(GOLDEN)) for f in FILES])
def test_golden_message(path: Path):
    actual = json.loads(json.dumps(describe(path.read_bytes())))
    expected_path = path.with_suffix(".json")
    if UPDATE:
        expected_path.write_text(
            json.dumps(actual, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
    assert expected_path.exists(), f"{expected_path.name} is missing"
    assert actual == json.loads(expected_path.read_text(encoding="utf-8"))
