"""ASGI entry point: `make run` serves it with uvicorn.

Django's views run as WSGI in a fixed pool of threads (a2wsgi): Django's own ASGI handler
starts a new thread for every request (its thread-sensitive context), about 2 ms of a
5 ms status GET on this machine, measured, and its connections cannot outlive the
request. The pool's threads live as long as the process. The event streams are served by
their own small ASGI route ahead of it, so that a waiting client holds no thread
(taskqueue.api.stream). Static files (the admin's, the API docs') are served by Django's
handler in the same threads.
"""

import os

from a2wsgi import WSGIMiddleware
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
wsgi_application = StaticFilesHandler(get_wsgi_application())

from django.conf import settings  # noqa: E402  (configured by get_wsgi_application)

from taskqueue.api.stream import route_events  # noqa: E402  (needs the apps loaded)

django_application = WSGIMiddleware(wsgi_application, workers=settings.WEB_THREADS)
application = route_events(django_application)
