"""Settings of the soak's processes: the project's, plus the soak's task types."""

from project.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.soak"]  # noqa: F405
LOGGING["root"]["handlers"] = ["console"]  # noqa: F405
TASKQUEUE["EXCLUSIVE_RETRY_DELAY"] = 1  # noqa: F405  (the mix has an exclusive type)
