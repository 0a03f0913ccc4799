from django.apps import AppConfig


class TaskQueueConfig(AppConfig):
    name = "taskqueue"
    verbose_name = "Task queue"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.utils.module_loading import autodiscover_modules

        from taskqueue import checks  # noqa: F401  (registers the system checks)

        # Every process that can change a user, a token or a permission (web, shell,
        # workers) must tell the web processes' token caches: connect those signals here.
        from taskqueue.api import authentication  # noqa: F401

        # Task types live in each app's tasks.py; taskqueue never imports them by name.
        autodiscover_modules("tasks")
