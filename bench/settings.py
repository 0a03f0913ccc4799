"""Settings for the benchmark: the project's, plus the reference views' URLs."""

from project.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
LOGGING["root"]["level"] = "WARNING"  # noqa: F405
LOGGING["root"]["handlers"] = ["console"]  # noqa: F405
