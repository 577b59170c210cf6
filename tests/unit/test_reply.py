from pathlib import Path

import pytest

from webapp.mail.parse import parse_message
from webapp.mail.reply import Decision, decision_from_message, extract_new_text, parse_decision

GOLDEN = Path(__file__).resolve().parent.parent / "golden"


@pytest.mark.parametrize(
    ("text", "verdict", "comment"),
    [
        ("APPROVE", "approve", ""),
        ("Approved!", "approve", ""),
        ("yes.", "approve", ""),
        ("OK", "approve", ""),
        ("approve - looks fine\nthanks", "approve", "looks fine\nthanks"),
        ("REJECT", "reject", ""),
        ("rejected: too expensive", "reject", "too expensive"),
        ("No, too expensive", "reject", "too expensive"),
        ("Genehmigt.", "approve", ""),
        ("genehmigen", "approve", ""),
        ("Ja", "approve", ""),
        ("ABGELEHNT - Budget fehlt", "reject", "Budget fehlt"),
        ("ablehnen", "reject", ""),
        ("Nein!", "reject", ""),
        ("Approuvé", "approve", ""),
        ("approuve", "approve", ""),
        ("APPROUVER", "approve", ""),
        ("Oui", "approve", ""),
        ("Rejeté", "reject", ""),
        ("rejeter", "reject", ""),
        ("Refusé, pas de budget", "reject", "pas de budget"),
        ("Non.", "reject", ""),
        ("Aprobado", "approve", ""),
        ("aprobar", "approve", ""),
        ("Sí", "approve", ""),
        ("si", "approve", ""),
        ("RECHAZADO", "reject", ""),
        ("rechazar: falta el presupuesto aprobado", "reject", "falta el presupuesto aprobado"),
        ("  \n\n  *Approve*  \n", "approve", ""),
    ],
)
def test_decision_words(text, verdict, comment):
    decision = parse_decision(text)
    assert (decision.verdict, decision.comment) == (verdict, comment)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "No problem, approved",  # an everyday word in a sentence is not a decision
        "Yes thanks",
        "OK, rejected",  # both decisions named
        "Hi John,\nAPPROVE",  # the decision must be on the first line
        "I approve",
        "Approvedd",
        "1. approve",
    ],
)
def test_no_decision(text):
    decision = parse_decision(text)
    assert decision.verdict is None
    assert decision.comment == text.strip()


def test_the_word_is_reported_as_written():
    assert parse_decision("approuvé, merci") == Decision(
        "approve", "merci", "approuvé", "approuvé, merci"
    )


@pytest.mark.parametrize(
    "attribution",
    [
        "On Sat, Nov 21, 2026 at 9:14 AM Casemail <approvals@casemail.test> wrote:",
        "On Sat, Nov 21, 2026 at 9:14 AM Casemail <\napprovals@casemail.test> wrote:",
        "On 21 Nov 2026, at 09:14, Casemail <approvals@casemail.test> wrote:",
        "On 11/21/26 09:14, Casemail wrote:",
        "Am 21.11.2026 um 09:14 schrieb Casemail <approvals@casemail.test>:",
        "Le sam. 21 nov. 2026 à 09:14, Casemail <approvals@casemail.test> a écrit :",
        "El sáb, 21 nov 2026 a las 9:14, Casemail (<approvals@casemail.test>) escribió:",
    ],
)
def test_quoted_history_after_an_attribution_is_removed(attribution):
    text = f"Approved, thanks.\n\n{attribution}\n\n> Case EXP-1 waits.\n> APPROVE or REJECT\n"
    assert extract_new_text(text) == "Approved, thanks."


def test_attribution_followed_by_unquoted_history_cuts_everything_below():
    text = "REJECT\n\nOn Sat, Nov 21, 2026, Casemail wrote:\nCase EXP-1 waits.\nAPPROVE"
    assert extract_new_text(text) == "REJECT"


def test_bottom_posted_answers_are_kept():
    text = "On 11/21/26 09:14, Casemail wrote:\n> Case EXP-1 waits.\n\nREJECT\nToo late."
    assert extract_new_text(text) == "REJECT\nToo late."


@pytest.mark.parametrize(
    "history",
    [
        "-----Original Message-----\nFrom: Casemail\nSent: Saturday\nAPPROVE",
        "----- Ursprüngliche Nachricht -----\nVon: Casemail\nAPPROVE",
        "-----Message d'origine-----\nDe : Casemail\nAPPROVE",
        "-----Mensaje original-----\nDe: Casemail\nAPPROVE",
        "________________________________\nFrom: Casemail\nSent: Saturday\nAPPROVE",
        "From: Casemail <approvals@casemail.test>\nSent: Saturday, November 21\nAPPROVE",
        "Von: Casemail <approvals@casemail.test>\nGesendet: Samstag\nAPPROVE",
        "De : Casemail <approvals@casemail.test>\nEnvoyé : samedi\nAPPROVE",
        "De: Casemail <approvals@casemail.test>\nEnviado: sábado\nAPPROVE",
        "*From:* Casemail <approvals@casemail.test>\n*Date:* Saturday\nAPPROVE",
    ],
)
def test_outlook_style_history_is_removed(history):
    assert extract_new_text(f"No.\nOver budget.\n\n{history}") == "No.\nOver budget."


@pytest.mark.parametrize(
    "signature",
    [
        "-- \nTom Weber",
        "--\nTom Weber",
        "Sent from my iPhone",
        "Sent from Outlook for Android",
        "Get Outlook for iOS",
        "Von meinem iPhone gesendet",
        "Gesendet von meinem Samsung Galaxy",
        "Envoyé de mon iPhone",
        "Enviado desde mi iPhone",
    ],
)
def test_signatures_are_removed(signature):
    assert extract_new_text(f"APPROVE\nfine by me\n\n{signature}\n") == "APPROVE\nfine by me"


def test_a_from_line_in_the_new_text_is_kept_when_no_header_block_follows():
    assert extract_new_text("From: my side it is fine.\nAPPROVE") == (
        "From: my side it is fine.\nAPPROVE"
    )


def test_html_only_replies_are_read_from_their_text():
    message = parse_message((GOLDEN / "reply" / "reply_html_only.eml").read_bytes())
    assert message.text_from_html
    decision = decision_from_message(message)
    assert (decision.verdict, decision.comment) == ("approve", "go ahead.\nNora")


def test_quoted_instructions_never_count_as_a_decision():
    message = parse_message((GOLDEN / "reply" / "reply_no_decision.eml").read_bytes())
    assert decision_from_message(message).verdict is None
