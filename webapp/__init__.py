"""Casemail: email-driven case management."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from flask import Flask

from webapp.config import load_config
from webapp.extensions import bootstrap, csrf, db, init_redis, login_manager, migrate
from webapp.forms.base import allow_private_mail_domains


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings from the environment, overridden by `config` (tests)."""
    app = Flask(
        __name__,
        instance_path=os.environ.get("CASEMAIL_INSTANCE_PATH") or None,
        template_folder="../templates",
        static_folder="../static",
        instance_relative_config=True,
    )
    os.makedirs(app.instance_path, exist_ok=True)
    env = dict(os.environ)
    if config and "CASEMAIL_ENV" in config:
        env["CASEMAIL_ENV"] = config["CASEMAIL_ENV"]
    app.config.from_mapping(load_config(env, app.instance_path))
    if config:
        app.config.from_mapping(config)
    app.logger.setLevel(app.config["CASEMAIL_LOG_LEVEL"])
    logging.getLogger("webapp").setLevel(app.config["CASEMAIL_LOG_LEVEL"])

    allow_private_mail_domains()
    db.init_app(app)
    migrate.init_app(
        app, db, directory=os.path.abspath(os.path.join(app.root_path, "..", "migrations"))
    )
    csrf.init_app(app)
    login_manager.init_app(app)
    bootstrap.init_app(app)
    init_redis(app)

    from webapp import models  # noqa: F401  (registers every table with the metadata)
    from workers.outbound import install_send_after_commit

    install_send_after_commit(app)
    from webapp.web import register_web

    register_web(app)

    from webapp.cli import register_cli

    register_cli(app)
    return app
