"""Users, passwords and API tokens."""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select

from webapp.extensions import db
from webapp.models import ApiToken, Role, User
from webapp.models.types import utcnow

_hasher = PasswordHasher()
TOKEN_PREFIX = "cm_"  # noqa: S105 - marks our tokens; not a secret
MIN_PASSWORD_LENGTH = 10
PASSWORD_LENGTH_MESSAGE = f"Use at least {MIN_PASSWORD_LENGTH} characters (and at most 1000)."


class UserError(ValueError):
    """A user operation was refused; the message is fit to show."""


def normalise_email(email: str) -> str:
    return email.strip().lower()


def check_password_strength(password: str) -> None:
    """Raises UserError when the password is too weak to accept."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(f"The password must have at least {MIN_PASSWORD_LENGTH} characters.")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def find_user(email: str) -> User | None:
    return db.session.scalar(select(User).where(User.email == normalise_email(email)))


def create_user(email: str, password: str, role: Role | str, name: str = "") -> User:
    """Create a user; raises UserError for a taken email, unknown role or weak password."""
    email = normalise_email(email)
    if role not in {r.value for r in Role}:
        raise UserError(f"Unknown role {role!r}; choose admin, designer or worker.")
    if find_user(email) is not None:
        raise UserError(f"A user with the email {email} already exists.")
    check_password_strength(password)
    user = User(
        email=email,
        name=name.strip(),
        role=str(role),
        password_hash=hash_password(password),
        session_token=secrets.token_hex(32),
    )
    db.session.add(user)
    db.session.flush()
    return user


def set_password(user: User, password: str) -> None:
    """Set a new password and end the user's other sessions."""
    check_password_strength(password)
    user.password_hash = hash_password(password)
    user.session_token = secrets.token_hex(32)
    db.session.flush()


def verify_password(user: User, password: str) -> bool:
    try:
        _hasher.verify(user.password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    return True


def authenticate(email: str, password: str) -> User | None:
    """The active user with this email and password, or None."""
    user = find_user(email)
    if user is None:
        # Spend the same time as a real check so that response times do not reveal accounts.
        _hasher.hash(password)
        return None
    if not verify_password(user, password) or not user.active:
        return None
    user.last_login_at = utcnow()
    db.session.flush()
    return user


def count_admins() -> int:
    return (
        db.session.scalar(
            select(func.count()).select_from(User).where(User.role == Role.ADMIN, User.active)
        )
        or 0
    )


def update_user(user: User, *, role: str, active: bool, name: str, acting: User) -> None:
    """Change role, name and active flag; refuses to leave the system without an active admin."""
    if role not in {r.value for r in Role}:
        raise UserError(f"Unknown role {role!r}.")
    losing_admin = user.role == Role.ADMIN and user.active and (role != Role.ADMIN or not active)
    if losing_admin and count_admins() <= 1:
        raise UserError("This is the last active admin; make another user admin first.")
    if user.id == acting.id and not active:
        raise UserError("You cannot deactivate your own account.")
    user.role = role
    user.active = active
    user.name = name.strip()
    if not active:
        user.session_token = secrets.token_hex(32)
    db.session.flush()


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue_api_token(user: User, name: str) -> tuple[ApiToken, str]:
    """Create a token; the plaintext is returned once and only its hash is stored."""
    name = name.strip() or "API token"
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user=user, name=name[:100], prefix=plaintext[:10], token_hash=_hash_token(plaintext)
    )
    db.session.add(token)
    db.session.flush()
    return token, plaintext


def user_for_api_token(plaintext: str) -> User | None:
    """The active user owning this unrevoked token, or None."""
    if not plaintext.startswith(TOKEN_PREFIX):
        return None
    token = db.session.scalar(select(ApiToken).where(ApiToken.token_hash == _hash_token(plaintext)))
    if token is None or token.is_revoked or not token.user.active:
        return None
    token.last_used_at = utcnow()
    db.session.flush()
    return token.user


def revoke_api_token(token: ApiToken) -> None:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        db.session.flush()
