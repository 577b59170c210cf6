"""Channel pages: the list, a channel with its routes (add, edit, move, remove), delete."""

from __future__ import annotations

from flask import abort, flash, redirect, render_template, request, url_for
from sqlalchemy import select
from wtforms import Field

from webapp.channels import bp
from webapp.channels.forms import ChannelForm, RouteForm
from webapp.extensions import db
from webapp.forms.auth import ConfirmForm
from webapp.forms.base import BaseForm
from webapp.ids import is_id
from webapp.models import ChannelRoute, EmailChannel, EmailListener
from webapp.security import admin_required
from webapp.services import channels as service
from webapp.services import rules as rule_service
from webapp.views import delete_and_redirect


def _channel(channel_id: int) -> EmailChannel:
    channel = db.session.get(EmailChannel, channel_id)
    if channel is None:
        abort(404)
    return channel


def _route(channel: EmailChannel, route_id: int) -> ChannelRoute:
    # `?edit_route=` is any number; one that cannot be an ID names no route.
    route = db.session.get(ChannelRoute, route_id) if is_id(route_id) else None
    if route is None or route.channel_id != channel.id:
        abort(404)
    return route


def _place(form: BaseForm, exc: service.ChannelError, fallback: Field) -> None:
    """Put each refusal beside its field (the first field when none is named)."""
    placed = False
    for name, text in exc.field_errors.items():
        field = getattr(form, name, None)
        if isinstance(field, Field):
            field.errors = [*field.errors, text]
            placed = True
    if not placed:
        fallback.errors = [*fallback.errors, str(exc)]


def _channel_form(channel: EmailChannel | None) -> ChannelForm:
    data = None
    if channel is not None:
        data = {
            "name": channel.name,
            "mode": channel.mode,
            "default": channel.default_kind,
            "default_rule": channel.default_rule_id,
            "default_case_type": channel.default_case_type_id,
        }
    form = ChannelForm(data=data)
    form.set_choices(rule_service.all_rules(), rule_service.published_case_types())
    return form


def _route_form(route: ChannelRoute | None = None) -> RouteForm:
    """The form to add a route, or (route given) to edit that route in its place."""
    data = None
    if route is not None:
        data = {
            "conditions": "\n".join(service.condition_line(c) for c in route.conditions or []),
            "target": route.target_kind,
            "target_rule": route.rule_id,
            "target_case_type": route.case_type_id,
        }
    form = RouteForm(data=data)
    form.set_choices(rule_service.all_rules(), rule_service.published_case_types())
    if route is not None:
        form.submit.label.text = "Save route"
    return form


def _route_values(form: RouteForm) -> tuple[list[dict[str, str]], str, int | None]:
    """The conditions, target kind and target id the route form sends; raises ChannelError."""
    kind = form.target.data or ""
    target_id = form.target_rule.data if kind == "rule" else form.target_case_type.data
    return service.parse_condition_lines(form.conditions.data or ""), kind, target_id


def _save(form: ChannelForm, channel: EmailChannel | None) -> EmailChannel | None:
    kind = form.default.data or ""
    target_id = form.default_rule.data if kind == "rule" else form.default_case_type.data
    try:
        return service.save_channel(
            channel,
            name=form.name.data or "",
            mode=form.mode.data or "",
            default_kind=kind,
            default_id=target_id,
        )
    except service.ChannelError as exc:
        db.session.rollback()
        _place(form, exc, form.name)
        return None


def _page(
    channel: EmailChannel,
    form: ChannelForm,
    route_form: RouteForm,
    status: int = 200,
    editing: ChannelRoute | None = None,
):
    listeners = list(
        db.session.scalars(select(EmailListener.name).where(EmailListener.channel_id == channel.id))
    )
    return render_template(
        "channels/form.html",
        channel=channel,
        form=form,
        route_form=route_form,
        action_form=ConfirmForm(formdata=None),
        listeners=listeners,
        condition_line=service.condition_line,
        editing=editing,
    ), status


@bp.route("/")
@admin_required
def channels():
    used: dict[int, list[str]] = {}
    for listener in db.session.scalars(
        select(EmailListener).where(EmailListener.channel_id.is_not(None))
    ):
        used.setdefault(listener.channel_id or 0, []).append(listener.name)
    return render_template("channels/index.html", channels=service.all_channels(), used=used)


@bp.route("/new", methods=["GET", "POST"])
@admin_required
def new_channel():
    form = _channel_form(None)
    if form.validate_on_submit():
        channel = _save(form, None)
        if channel is not None:
            db.session.commit()
            flash(f"Created the channel {channel.name}: now add its routes.", "success")
            return redirect(url_for("channels.edit_channel", channel_id=channel.id))
    status = 400 if form.is_submitted() else 200
    return render_template("channels/form.html", channel=None, form=form), status


@bp.route("/<int:channel_id>", methods=["GET", "POST"])
@admin_required
def edit_channel(channel_id: int):
    channel = _channel(channel_id)
    form = _channel_form(channel)
    editing = None
    edit_id = request.args.get("edit_route", type=int)
    if edit_id is not None and request.method == "GET":
        editing = _route(channel, edit_id)
    route_form = _route_form(editing)
    if form.validate_on_submit():
        saved = _save(form, channel)
        if saved is not None:
            db.session.commit()
            flash(f"Saved the channel {saved.name}.", "success")
            return redirect(url_for("channels.edit_channel", channel_id=channel_id))
        channel = _channel(channel_id)
    return _page(channel, form, route_form, 400 if form.is_submitted() else 200, editing)


@bp.route("/<int:channel_id>/routes", methods=["POST"])
@admin_required
def add_route(channel_id: int):
    channel = _channel(channel_id)
    form = _channel_form(channel)
    route_form = _route_form()
    if route_form.validate_on_submit():
        try:
            service.add_route(channel, *_route_values(route_form))
        except service.ChannelError as exc:
            db.session.rollback()
            _place(route_form, exc, route_form.conditions)
            return _page(_channel(channel_id), form, route_form, 400)
        db.session.commit()
        flash("Added the route.", "success")
        return redirect(url_for("channels.edit_channel", channel_id=channel_id))
    return _page(channel, form, route_form, 400)


@bp.route("/<int:channel_id>/routes/<int:route_id>", methods=["POST"])
@admin_required
def edit_route(channel_id: int, route_id: int):
    channel = _channel(channel_id)
    route = _route(channel, route_id)
    route_form = _route_form(route)
    if route_form.validate_on_submit():
        try:
            changed = service.update_route(route, *_route_values(route_form))
        except service.ChannelError as exc:
            db.session.rollback()
            _place(route_form, exc, route_form.conditions)
            channel = _channel(channel_id)
            return _page(
                channel, _channel_form(channel), route_form, 400, _route(channel, route_id)
            )
        db.session.commit()
        flash(f"Saved route {route.position}." if changed else "The route is unchanged.", "success")
        return redirect(url_for("channels.edit_channel", channel_id=channel_id))
    return _page(channel, _channel_form(channel), route_form, 400, route)


def _confirmed() -> None:
    if not ConfirmForm().validate_on_submit():
        abort(400)


@bp.route("/<int:channel_id>/routes/<int:route_id>/up", methods=["POST"])
@admin_required
def route_up(channel_id: int, route_id: int):
    route = _route(_channel(channel_id), route_id)
    _confirmed()
    service.move_route(route, -1)
    db.session.commit()
    return redirect(url_for("channels.edit_channel", channel_id=channel_id))


@bp.route("/<int:channel_id>/routes/<int:route_id>/down", methods=["POST"])
@admin_required
def route_down(channel_id: int, route_id: int):
    route = _route(_channel(channel_id), route_id)
    _confirmed()
    service.move_route(route, 1)
    db.session.commit()
    return redirect(url_for("channels.edit_channel", channel_id=channel_id))


@bp.route("/<int:channel_id>/routes/<int:route_id>/delete", methods=["POST"])
@admin_required
def remove_route(channel_id: int, route_id: int):
    route = _route(_channel(channel_id), route_id)
    _confirmed()
    position = route.position
    service.remove_route(route)
    db.session.commit()
    flash(f"Removed route {position}.", "success")
    return redirect(url_for("channels.edit_channel", channel_id=channel_id))


@bp.route("/<int:channel_id>/delete", methods=["POST"])
@admin_required
def delete_channel(channel_id: int):
    channel = _channel(channel_id)
    return delete_and_redirect(
        lambda: service.delete_channel(channel),
        refused=service.ChannelError,
        done=f"Deleted the channel {channel.name}.",
        back=url_for("channels.edit_channel", channel_id=channel_id),
        home=url_for("channels.channels"),
    )
