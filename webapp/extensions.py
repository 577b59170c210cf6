"""Flask extensions, created unbound; `create_app` binds them. Nothing here connects at import."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask, current_app
from flask_bootstrap import Bootstrap5
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from redis import Redis
from rq import Queue
from sqlalchemy import MetaData, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase

# Stable constraint names let Alembic alter constraints on SQLite (batch mode) and PostgreSQL alike.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)

# db.Model is built at run time, so type checkers cannot see it; they see the declarative base
# it derives from, which gives them the same mapped attributes.
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
migrate = Migrate(render_as_batch=True, compare_type=True)
csrf = CSRFProtect()
login_manager = LoginManager()
bootstrap = Bootstrap5()

_REDIS_KEY = "casemail.redis"


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    """WAL lets the web and the workers read while one writes; foreign keys are off by default."""
    module = type(dbapi_connection).__module__
    if not module.startswith("sqlite3"):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def init_redis(app: Flask) -> None:
    """Attach a lazily connecting Redis client to the app (no connection is opened here)."""
    app.extensions[_REDIS_KEY] = Redis.from_url(
        app.config["REDIS_URL"], socket_connect_timeout=5, health_check_interval=30
    )


def get_redis(app: Flask | None = None) -> Redis:
    """The app's Redis client."""
    return (app or current_app).extensions[_REDIS_KEY]


def get_queue(name: str, app: Flask | None = None) -> Queue:
    """An RQ queue by one of the names in `workers.queues`."""
    return Queue(name, connection=get_redis(app))
