"""WTForms classes, one module per area, on a shared BaseForm."""

from webapp.forms.base import BaseForm

__all__ = ["BaseForm"]
