"""The suite logs apart from `make run`: log_statistics must not report the tests' errors."""

import logging
from pathlib import Path

from django.conf import settings


def test_the_suite_logs_into_var_test_log_not_var_log():
    files = [
        Path(handler.baseFilename)
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.FileHandler) and handler.baseFilename != "/dev/null"
    ]
    assert files, "no file handler on the root logger"
    for path in files:
        assert path.parent == Path(settings.VAR_DIR) / "test-log", path
    assert settings.MAINTENANCE["LOG_DIR"] == Path(settings.VAR_DIR) / "test-log"
    assert Path(settings.VAR_DIR) / "log" not in [path.parent for path in files]
