"""Slows password guessing: failed sign-ins per address and client are counted in Redis."""

from __future__ import annotations

import hashlib

from flask import current_app
from redis.exceptions import RedisError

from webapp.extensions import get_redis


def _key(email: str, client: str) -> str:
    digest = hashlib.sha256(f"{email.lower()}|{client}".encode()).hexdigest()[:32]
    return f"casemail:login-failures:{digest}"


def is_locked(email: str, client: str) -> bool:
    try:
        count = get_redis().get(_key(email, client))
    except RedisError:
        current_app.logger.warning("sign-in throttle unavailable: Redis does not answer")
        return False
    return count is not None and int(count) >= current_app.config["CASEMAIL_LOGIN_MAX_FAILURES"]


def record_failure(email: str, client: str) -> None:
    try:
        pipe = get_redis().pipeline()
        key = _key(email, client)
        pipe.incr(key)
        pipe.expire(key, current_app.config["CASEMAIL_LOGIN_LOCK_SECONDS"])
        pipe.execute()
    except RedisError:
        current_app.logger.warning("sign-in throttle unavailable: Redis does not answer")


def clear(email: str, client: str) -> None:
    try:
        get_redis().delete(_key(email, client))
    except RedisError:
        current_app.logger.warning("sign-in throttle unavailable: Redis does not answer")
