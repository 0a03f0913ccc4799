"""The reference for the django.tasks backend: a `@task` that does nothing."""

try:
    from django.tasks import task
except ImportError:  # Django 5.2: the backport
    from django_tasks import task


@task()
def noop() -> None:
    return None
