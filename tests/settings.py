"""The project's settings for the test suite: the same, plus an example app, and the logs
elsewhere.

`make run`'s log_statistics reads var/log/app.log; the suite (and every worker or web
process it starts: they inherit DJANGO_SETTINGS_MODULE) logs into VAR_DIR/test-log/
instead, so that a new user's first statistics are not the test suite's errors.
"""

import copy

from project.settings import *  # noqa: F403
from project.settings import INSTALLED_APPS, LOGGING, MAINTENANCE, VAR_DIR

# An app that uses only Django's Tasks API, run on this engine (tests/example_app).
INSTALLED_APPS = [*INSTALLED_APPS, "tests.example_app"]
ROOT_URLCONF = "tests.urls"

LOG_DIR = VAR_DIR / "test-log"
MAINTENANCE = {**MAINTENANCE, "LOG_DIR": LOG_DIR}
LOGGING = copy.deepcopy(LOGGING)
LOGGING["handlers"]["file"]["filename"] = str(LOG_DIR / "app.log")
