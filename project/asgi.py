"""ASGI entry point: `make run` serves it with uvicorn.

Static files (the admin's, the API docs') are served ahead of Django so that every
middleware stays async-capable, and the event streams are served by their own small ASGI
route so that a waiting client holds no thread (taskqueue.api.stream).
"""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = ASGIStaticFilesHandler(get_asgi_application())

from taskqueue.api.stream import route_events  # noqa: E402  (needs the apps loaded)

application = route_events(django_application)
