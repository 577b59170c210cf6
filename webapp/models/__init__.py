"""All models, imported here so that Alembic and the app see every table."""

from webapp.models.accounts import AuthProfile, EmailAccount, Keystore, KeystoreKind
from webapp.models.cases import (
    Approval,
    ApprovalStatus,
    Case,
    CaseAttachment,
    CaseCounter,
    CaseEvent,
    CaseType,
    CaseTypeVersion,
    OutboundKind,
    OutboundMessage,
    OutboundRecipient,
    OutboundStatus,
)
from webapp.models.channels import ChannelRoute, EmailChannel
from webapp.models.groups import WorkGroup, work_group_members
from webapp.models.inbound import InboundMessage, InboundRaw, InboundStatus
from webapp.models.listeners import (
    AfterProcessing,
    EmailListener,
    ResolvedCasePolicy,
    RuleAction,
    ServiceEmailRule,
)
from webapp.models.storage import compress_with_lz4
from webapp.models.user import ApiToken, Role, User

compress_with_lz4(Case.metadata.tables)

__all__ = [
    "AfterProcessing",
    "ApiToken",
    "Approval",
    "ApprovalStatus",
    "AuthProfile",
    "Case",
    "CaseAttachment",
    "CaseCounter",
    "CaseEvent",
    "CaseType",
    "CaseTypeVersion",
    "ChannelRoute",
    "EmailAccount",
    "EmailChannel",
    "EmailListener",
    "InboundMessage",
    "InboundRaw",
    "InboundStatus",
    "Keystore",
    "KeystoreKind",
    "OutboundKind",
    "OutboundMessage",
    "OutboundRecipient",
    "OutboundStatus",
    "ResolvedCasePolicy",
    "Role",
    "RuleAction",
    "ServiceEmailRule",
    "User",
    "WorkGroup",
    "work_group_members",
]
