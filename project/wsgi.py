"""WSGI entry point (static files served ahead of Django, as under ASGI)."""

import os

from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
application = StaticFilesHandler(get_wsgi_application())
