"""The form every Casemail form derives from."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import wtforms
from flask_wtf import FlaskForm
from flask_wtf.file import FileField as FlaskFileField
from wtforms import FieldList, FileField, FormField, PasswordField, SelectField
from wtforms.validators import StopValidation

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


class _ReadFirst:
    """A number field whose value could not be read as a number says only that: the range
    check after it would speak of a number that was never typed. Spaces alone are no value,
    left to "required" or "optional" to say what that means."""

    process_errors: list[Any]
    raw_data: list[Any] | None
    data: Any

    def process_formdata(self, valuelist: list[Any]) -> None:
        if valuelist and isinstance(valuelist[0], str) and not valuelist[0].strip():
            self.raw_data = [""]
            self.data = None
            return
        super().process_formdata(valuelist)  # type: ignore[misc]

    def pre_validate(self, form: Any) -> None:
        if self.process_errors:
            raise StopValidation()
        super().pre_validate(form)  # type: ignore[misc]


class IntegerField(_ReadFirst, wtforms.IntegerField):
    """A whole number; "abc" or "1.5" is refused with one message."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("invalid_value_message", "Enter a whole number.")
        super().__init__(*args, **kwargs)


class DecimalField(_ReadFirst, wtforms.DecimalField):
    """A number; one message for what is not a number, including NaN and infinities (which
    Python's Decimal reads, and a range check cannot compare)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("invalid_value_message", "Enter a number.")
        super().__init__(*args, **kwargs)

    def process_formdata(self, valuelist: list[Any]) -> None:
        super().process_formdata(valuelist)
        if isinstance(self.data, Decimal) and not self.data.is_finite():
            self.data = None
            raise ValueError(self.invalid_value_message)


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
