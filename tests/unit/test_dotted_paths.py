"""Every dotted path the settings name imports on its own, first, in a fresh interpreter.

Which of them Django or DRF imports first depends on the order of checks and requests; an
import cycle that only shows when one particular module is first (the CSRF failure view
before DRF's parsers did, in `manage.py check` on CI) must fail here.
"""

import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[2]
OURS = ("taskqueue.", "maintenance.", "project.")


def _dotted(value):
    if isinstance(value, str):
        if value.startswith(OURS) and " " not in value:
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _dotted(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _dotted(item)


def _settings_paths():
    found = set()
    for name in dir(settings):
        if name.isupper():
            found.update(_dotted(getattr(settings, name)))
    return sorted(found)


def test_the_settings_name_our_modules():
    paths = _settings_paths()
    assert "taskqueue.api.exceptions.csrf_failure" in paths
    assert "taskqueue.api.parsers.BoundedJSONParser" in paths


@pytest.mark.parametrize("path", _settings_paths())
def test_each_dotted_path_imports_first(path):
    code = (
        "import django; django.setup()\n"
        "from django.utils.module_loading import import_string\n"
        f"import_string({path!r})\n"
    )
    if path.count(".") == 1:  # a module named alone, e.g. ROOT_URLCONF
        code = f"import django; django.setup()\nimport {path}\n"
    env = {"DJANGO_SETTINGS_MODULE": "project.settings", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
