"""The form every Casemail form derives from."""

from __future__ import annotations

from typing import Any

from flask_wtf import FlaskForm
from flask_wtf.file import FileField as FlaskFileField
from wtforms import FieldList, FileField, FormField, PasswordField, SelectField

from webapp.ids import as_id, as_optional_id

_UNFILTERED = (PasswordField, FileField, FlaskFileField, FieldList, FormField)


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class BaseForm(FlaskForm):
    """CSRF-protected form that trims surrounding white space from every text value."""

    class Meta:
        def bind_field(self, form: Any, unbound_field: Any, options: dict[str, Any]) -> Any:
            # Passwords and files keep their exact value; lists of sub-forms take no filters
            # (their own fields are trimmed).
            if issubclass(unbound_field.field_class, _UNFILTERED):
                return unbound_field.bind(form=form, **options)
            filters = (_strip, *unbound_field.kwargs.get("filters", ()))
            return unbound_field.bind(form=form, filters=filters, **options)


def row_select(label: str, *, choose: str, optional: bool = True, **kwargs: Any) -> SelectField:
    """A select of rows by their IDs (empty for none when `optional`). A value that is not one
    of its choices, or cannot be an ID at all, is refused with "Choose <choose> from the list."
    before it reaches the database."""
    refusal = f"Choose {choose} from the list."
    return SelectField(
        label,
        coerce=as_optional_id if optional else as_id,
        invalid_value_message=refusal,
        invalid_choice_message=refusal,
        **kwargs,
    )


# Addresses under .test, .local and .localhost are normal for on-premises and test mail
# servers; email_validator refuses them unless told otherwise (its documented module setting).
_REFUSED_SPECIAL_DOMAINS = ["arpa", "invalid", "onion"]


def allow_private_mail_domains() -> None:
    import email_validator

    email_validator.SPECIAL_USE_DOMAIN_NAMES[:] = _REFUSED_SPECIAL_DOMAINS
