"""Typed readers for environment variables, failing with a clear ImproperlyConfigured."""

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

TRUE_VALUES = {"1", "true", "yes", "on"}
FALSE_VALUES = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return default if value is None else value.strip()


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE_VALUES:
        return True
    if value in FALSE_VALUES:
        return False
    raise ImproperlyConfigured(f"{name} must be true or false (1/0, yes/no, on/off), not {raw!r}.")


def env_int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}.") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}.")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def secret_key(var_dir: Path) -> str:
    """SECRET_KEY from the environment, else one generated once and kept in var/."""
    value = env_str("SECRET_KEY")
    if value:
        return value
    path = var_dir / "secret_key"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    var_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(50)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


def database_config(var_dir: Path, *, pool_size: int) -> dict:
    """DATABASES['default'] from DATABASE_URL, SQLite under var/ by default."""
    import dj_database_url

    url = env_str("DATABASE_URL") or f"sqlite:///{var_dir / 'db.sqlite3'}"
    try:
        config = dj_database_url.parse(url, conn_max_age=0)
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(
            f"DATABASE_URL is not a database URL this project understands ({exc}); "
            "expected e.g. postgres://user@127.0.0.1:5432/name or sqlite:////abs/path.db"
        ) from None
    if config["ENGINE"] == "django.db.backends.postgresql" and env_bool("DATABASE_POOL", False):
        # Web processes only (make run sets it for uvicorn): a connection per view thread,
        # opened once, and a few for the event streams' checks. Never in workers, which
        # fork and hand their connection to the work horse instead.
        pool = {"min_size": 2, "max_size": pool_size + 4, "timeout": 10}
        config["OPTIONS"] = {"pool": pool}
    if config["ENGINE"] == "django.db.backends.sqlite3":
        var_dir.mkdir(parents=True, exist_ok=True)
        # Several processes (web, worker, cron) share the file: wait for locks, don't fail.
        config["OPTIONS"] = {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
        config["TEST"] = {"NAME": str(var_dir / "test.sqlite3")}
    return config


def redis_url(var_dir: Path) -> str:
    """REDIS_URL, else the embedded Redis's unix socket under var/."""
    url = env_str("REDIS_URL") or f"unix://{var_dir / 'redis' / 'redis.sock'}"
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(
            "REDIS_URL must start with redis://, rediss:// or unix:// "
            "(e.g. redis://127.0.0.1:6379/0); leave it unset to use the embedded Redis."
        )
    return url
