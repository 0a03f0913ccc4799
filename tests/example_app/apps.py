from django.apps import AppConfig


class ExampleAppConfig(AppConfig):
    """An app that knows only Django's Tasks API (django.tasks; the backport on 5.2)."""

    name = "tests.example_app"
    label = "example_app"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from tests.example_app import signals  # noqa: F401
