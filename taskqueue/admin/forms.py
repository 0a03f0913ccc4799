"""Django forms built from a task type's payload serializer (for admin pages)."""

from typing import Any

from django import forms
from rest_framework import serializers

from taskqueue.registry import get_task_type


def form_class_for(task_type: str) -> type[forms.Form]:
    """A form with one field per payload field: integers keep their bounds, booleans are
    checkboxes, defaults become initial values and help texts carry over."""
    spec = get_task_type(task_type)
    fields: dict[str, forms.Field] = {}
    for name, field in (spec.serializer().fields if spec.serializer else {}).items():
        options: dict[str, Any] = {"help_text": field.help_text or "", "required": False}
        if field.default is not serializers.empty:
            options["initial"] = field.default
        if isinstance(field, serializers.BooleanField):
            fields[name] = forms.BooleanField(**options)
        elif isinstance(field, serializers.IntegerField):
            fields[name] = forms.IntegerField(
                min_value=field.min_value, max_value=field.max_value, **options
            )
        else:
            fields[name] = forms.CharField(**options)
    return type(f"{task_type.title().replace('_', '')}Form", (forms.Form,), fields)


def payload_from(form: forms.Form) -> dict[str, Any]:
    """The cleaned data without fields left empty (their defaults then apply)."""
    return {k: v for k, v in form.cleaned_data.items() if v is not None and v != ""}
