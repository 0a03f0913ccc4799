from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


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


class ConsoleAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin with the console's site (taskqueue.sites) as `admin.site`."""

    default = False
    default_site = "taskqueue.sites.ConsoleSite"
