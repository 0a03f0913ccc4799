"""Settings for the benchmark: the project's, plus the reference views' URLs."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
LOGGING["root"]["handlers"] = ["console"]  # noqa: F405

try:  # the Celery reference's result store (bench/requirements.txt)
    import django_celery_results  # noqa: F401

    INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_results"]  # noqa: F405
except ImportError:
    pass
