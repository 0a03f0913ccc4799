"""Check what `make run` needs before it starts anything: one line per problem, exit 2.

The settings themselves are checked by loading them (manage.py prints a bad variable's
ImproperlyConfigured as one line); this adds the database, Redis and the web port.
"""

import errno
import socket
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import DatabaseError, connection

from taskqueue import backend


def redacted(url: str) -> str:
    """`url` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


class Command(BaseCommand):
    help = "Check the database, Redis and the web port; print one line per problem."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--port", type=int, help="A TCP port on 127.0.0.1 that must be free.")

    def handle(self, *args: Any, **options: Any) -> None:
        problems = [
            problem
            for problem in (self.database(), self.redis(), self.port(options["port"]))
            if problem
        ]
        for problem in problems:
            self.stderr.write(problem)
        if problems:
            sys.exit(2)

    def database(self) -> str | None:
        settings_dict = connection.settings_dict
        where = settings_dict["NAME"]
        if settings_dict.get("HOST"):
            where = f"{settings_dict['HOST']}:{settings_dict.get('PORT') or 5432}/{where}"
        try:
            connection.ensure_connection()
        except DatabaseError as exc:
            return f"DATABASE_URL: cannot use the database {where}: {first_line(exc)}"
        finally:
            connection.close()
        return None

    def redis(self) -> str | None:
        try:
            backend.get_connection().ping()
        except backend.RedisError as exc:
            where = redacted(settings.REDIS_URL)
            return f"REDIS_URL: Redis at {where} does not answer: {first_line(exc)}"
        return None

    def port(self, port: int | None) -> str | None:
        if port is None:
            return None
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    return f"PORT: cannot listen on 127.0.0.1:{port}: {exc.strerror}"
                return (
                    f"PORT: 127.0.0.1:{port} is already in use (another `make run`?); "
                    f"choose another port, e.g. PORT={port + 1} make run"
                )
        return None
