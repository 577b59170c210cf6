"""Built-in starter templates a designer can copy into a new case type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Starter:
    slug: str
    name: str
    prefix: str
    description: str
    definition: dict[str, Any]


def _resolutions() -> list[dict[str, Any]]:
    return [
        {
            "key": "completed",
            "name": "Resolved-Completed",
            "kind": "resolution",
            "resolution": "completed",
            "notifications": [
                {
                    "recipients": ["requester"],
                    "subject": "{{ case_id }} is complete: {{ subject }}",
                    "body": "Hello,\n\nyour request {{ case_id }} has been completed.",
                }
            ],
        },
        {
            "key": "rejected",
            "name": "Resolved-Rejected",
            "kind": "resolution",
            "resolution": "rejected",
            "notifications": [
                {
                    "recipients": ["requester"],
                    "subject": "{{ case_id }} was rejected: {{ subject }}",
                    "body": "Hello,\n\nyour request {{ case_id }} was rejected.",
                }
            ],
        },
        {
            "key": "withdrawn",
            "name": "Resolved-Withdrawn",
            "kind": "resolution",
            "resolution": "withdrawn",
        },
    ]


EXPENSE_APPROVAL = Starter(
    slug="expense-approval",
    name="Expense approval",
    prefix="EXP",
    description="An employee claims an expense; their manager approves it, finance pays it.",
    definition={
        "fields": [
            {"name": "amount", "label": "Amount", "type": "money", "required": True},
            {
                "name": "expense_date",
                "label": "Date of the expense",
                "type": "date",
                "required": True,
            },
            {
                "name": "category",
                "label": "Category",
                "type": "choice",
                "required": True,
                "options": ["Travel", "Meals", "Equipment", "Other"],
            },
            {
                "name": "manager_email",
                "label": "Manager's email",
                "type": "email",
                "required": True,
            },
            {"name": "notes", "label": "Notes", "type": "long_text"},
        ],
        "stages": [
            {
                "key": "submission",
                "name": "Submission",
                "kind": "work",
                "edit_fields": True,
                "actions": [
                    {"name": "Submit", "to": "manager_approval"},
                    {"name": "Withdraw", "to": "withdrawn", "require_fields": False},
                ],
            },
            {
                "key": "manager_approval",
                "name": "Manager approval",
                "kind": "approval",
                "approver_source": "field",
                "approver_field": "manager_email",
                "approval_mode": "any",
                "reject_to": "rejected",
                "reason_required": True,
                "sla_goal_hours": 24,
                "sla_deadline_hours": 72,
                "notifications": [
                    {
                        "recipients": ["approvers"],
                        "subject": "Approve {{ case_id }}: {{ amount }} for {{ category }}",
                        # Opens the approval request, which lists every field and says how
                        # to answer; approvers get no second message for this stage.
                        "body": "{{ requester }} asks you to approve {{ amount }} "
                        "({{ category }}, {{ expense_date }}).",
                    }
                ],
            },
            {
                "key": "payment",
                "name": "Payment",
                "kind": "work",
                "assignee_kind": "role",
                "assignee": "worker",
                "sla_goal_hours": 48,
                "sla_deadline_hours": 120,
                "notifications": [
                    {
                        "recipients": ["requester"],
                        "subject": "{{ case_id }} is approved: {{ subject }}",
                        "body": "Hello,\n\nyour expense {{ case_id }} of {{ amount }} has been "
                        "approved and is now with finance for payment.",
                    }
                ],
                "actions": [
                    {"name": "Mark paid", "to": "completed"},
                    {"name": "Send back", "to": "submission"},
                ],
            },
            *_resolutions(),
        ],
    },
)

PURCHASE_REQUEST = Starter(
    slug="purchase-request",
    name="Purchase request",
    prefix="PR",
    description="A request to buy something: a budget owner approves, then purchasing orders it.",
    definition={
        "fields": [
            {"name": "item", "label": "What to buy", "type": "text", "required": True},
            {
                "name": "quantity",
                "label": "Quantity",
                "type": "number",
                "required": True,
                "default": "1",
            },
            {
                "name": "estimated_cost",
                "label": "Estimated cost",
                "type": "money",
                "required": True,
            },
            {"name": "supplier", "label": "Supplier", "type": "text"},
            {
                "name": "justification",
                "label": "Why it is needed",
                "type": "long_text",
                "required": True,
            },
        ],
        "stages": [
            {
                "key": "request",
                "name": "Request",
                "kind": "work",
                "edit_fields": True,
                "actions": [
                    {"name": "Submit", "to": "budget_approval"},
                    {"name": "Withdraw", "to": "withdrawn", "require_fields": False},
                ],
            },
            {
                "key": "budget_approval",
                "name": "Budget approval",
                "kind": "approval",
                "approver_source": "addresses",
                "approvers": ["budget@example.com"],
                "approval_mode": "any",
                "reject_to": "rejected",
                "reason_required": True,
                "sla_goal_hours": 24,
                "sla_deadline_hours": 48,
                "notifications": [
                    {
                        "recipients": ["approvers"],
                        "subject": "Approve purchase {{ case_id }}: {{ item }}",
                        # Opens the approval request, which lists every field (the
                        # justification too) and says how to answer.
                        "body": "{{ requester }} asks to buy {{ quantity }} x {{ item }} "
                        "for about {{ estimated_cost }}.",
                    }
                ],
            },
            {
                "key": "ordering",
                "name": "Ordering",
                "kind": "work",
                "assignee_kind": "role",
                "assignee": "worker",
                "actions": [
                    {"name": "Ordered", "to": "completed"},
                    {"name": "Send back", "to": "request"},
                ],
            },
            *_resolutions(),
        ],
    },
)

STARTERS = {s.slug: s for s in (EXPENSE_APPROVAL, PURCHASE_REQUEST)}
