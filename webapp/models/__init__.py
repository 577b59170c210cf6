"""All models, imported here so that Alembic and the app see every table."""

from webapp.models.inbound import InboundMessage, InboundStatus
from webapp.models.user import ApiToken, Role, User

__all__ = ["ApiToken", "InboundMessage", "InboundStatus", "Role", "User"]
