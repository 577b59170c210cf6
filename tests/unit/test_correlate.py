import re

import pytest

from webapp.mail.correlate import (
    Correlation,
    Lookups,
    case_id_pattern,
    correlate,
    find_case_ids,
    find_reply_tokens,
    is_reply_token,
    new_reply_token,
    plus_address,
)
from webapp.mail.parse import parse_message

TOKEN = "mnqxgzlnmfuwyllhn5wgizloee"
OTHER_TOKEN = "mnqxgzlnmfuwyllporugk4rnge"


def _raw(**headers: str) -> bytes:
    head = {"From": "p@example.com", "To": "expenses@casemail.test", "Subject": "x", **headers}
    lines = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in head.items())
    return (lines + "\r\nbody").encode()


def _lookups(tokens=None, message_ids=None, case_ids=()) -> tuple[Lookups[str], list[str]]:
    asked: list[str] = []
    tokens = tokens or {}
    message_ids = message_ids or {}

    def by_token(token):
        asked.append(f"token {token}")
        return tokens.get(token)

    def by_ids(ids):
        asked.append(f"ids {' '.join(ids)}")
        return {i: message_ids[i] for i in ids if i in message_ids}

    def by_case_id(case_id):
        asked.append(f"case {case_id}")
        return case_id if case_id in case_ids else None

    return Lookups(by_token, by_ids, by_case_id), asked


def test_new_tokens_are_url_safe_unique_and_recognised():
    tokens = {new_reply_token() for _ in range(200)}
    assert len(tokens) == 200
    assert all(is_reply_token(t) and len(t) == 26 for t in tokens)
    assert not is_reply_token("short")
    assert not is_reply_token(TOKEN.upper())  # the caller lower-cases what it reads


def test_plus_address_replaces_any_existing_tag():
    assert plus_address("approvals+old@casemail.test", TOKEN) == (
        f"approvals+{TOKEN}@casemail.test"
    )


def test_reply_token_is_found_in_any_recipient_even_when_upper_cased():
    message = parse_message(
        _raw(To="someone@example.com", Cc=f"Approvals <APPROVALS+{TOKEN.upper()}@casemail.test>")
    )
    assert find_reply_tokens(message) == [
        (TOKEN, f"recipient APPROVALS+{TOKEN.upper()}@casemail.test")
    ]


def test_reply_token_is_found_in_delivered_to():
    message = parse_message(_raw(Delivered_To=f"approvals+{TOKEN}@casemail.test"))
    assert [t for t, _ in find_reply_tokens(message)] == [TOKEN]


def test_plus_tags_that_are_not_tokens_are_ignored():
    message = parse_message(_raw(To="maria+newsletter@example.com"))
    assert find_reply_tokens(message) == []


def test_a_top_level_token_header_is_not_trusted():
    message = parse_message(_raw(X_Casemail_Token=TOKEN))
    assert find_reply_tokens(message) == []


def test_order_token_first_then_threading_then_subject():
    lookups, asked = _lookups(
        tokens={TOKEN: "EXP-1"},
        message_ids={"<m@casemail.test>": "EXP-2"},
        case_ids={"EXP-3"},
    )
    raw = _raw(
        To=f"approvals+{TOKEN}@casemail.test",
        In_Reply_To="<m@casemail.test>",
        Subject="Re: [EXP-3] x",
    )
    assert correlate(parse_message(raw), lookups) == Correlation(
        "reply_token", TOKEN, "EXP-1", f"recipient approvals+{TOKEN}@casemail.test"
    )
    assert asked == [f"token {TOKEN}"]


def test_an_unknown_token_falls_through_to_in_reply_to():
    lookups, _ = _lookups(message_ids={"<m@casemail.test>": "EXP-2"})
    raw = _raw(To=f"approvals+{OTHER_TOKEN}@casemail.test", In_Reply_To="<m@casemail.test>")
    result = correlate(parse_message(raw), lookups)
    assert (result.method, result.key, result.case) == ("in_reply_to", "<m@casemail.test>", "EXP-2")
    assert result.description == "matched by In-Reply-To"


def test_references_are_tried_newest_first_in_one_lookup():
    lookups, asked = _lookups(
        message_ids={"<old@casemail.test>": "EXP-OLD", "<new@casemail.test>": "EXP-NEW"}
    )
    raw = _raw(References="<old@casemail.test> <new@casemail.test>", Message_ID="<me@x>")
    result = correlate(parse_message(raw), lookups)
    assert result.case == "EXP-NEW"
    assert result.description == "matched by References"
    assert asked == ["ids <new@casemail.test> <old@casemail.test>"]


def test_subject_case_id_needs_brackets_and_an_existing_case():
    lookups, asked = _lookups(case_ids={"EXP-1042"})
    raw = _raw(Subject="EXP-1 and [NOPE-9] then [EXP-1042]")
    result = correlate(parse_message(raw), lookups)
    assert (result.method, result.key, result.case) == ("subject_case_id", "EXP-1042", "EXP-1042")
    assert asked == ["case NOPE-9", "case EXP-1042"]
    assert result.description == "matched by the case id in the subject"


def test_no_evidence_is_no_match():
    lookups, _ = _lookups()
    result = correlate(parse_message(_raw(Subject="Hello")), lookups)
    assert result == Correlation("none", None, None)
    assert result.description == "no match"


@pytest.mark.parametrize(
    ("subject", "found"),
    [
        ("[EXP-1042]", ["EXP-1042"]),
        ("Re: Fwd: [HR2-7] [EXP-1042] [HR2-7]", ["HR2-7", "EXP-1042"]),
        ("[exp-1042]", []),
        ("[E-1]", []),  # prefix of one letter
        ("[ABCDEFGHIJK-1]", []),  # prefix longer than ten
        ("[2024-11]", []),  # starts with a digit: a date, not a case
        ("EXP-1042", []),
    ],
)
def test_case_ids_in_subjects(subject, found):
    assert find_case_ids(subject) == found


def test_case_id_pattern_can_be_limited_to_known_prefixes():
    pattern = case_id_pattern(["EXP", "HR", "bad prefix"])
    assert find_case_ids("[EXP-1] [PO-2] [HR-3]", pattern) == ["EXP-1", "HR-3"]
    assert find_case_ids("[EXP-1]", case_id_pattern([])) == []
    assert isinstance(case_id_pattern(), re.Pattern)
