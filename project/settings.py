"""Settings, read once from environment variables with working defaults (see README)."""

from pathlib import Path

from project.env import (
    database_config,
    env_bool,
    env_int,
    env_list,
    env_str,
    redis_url,
    secret_key,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR") or BASE_DIR / "var")

SECRET_KEY = secret_key(VAR_DIR)
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
CSRF_FAILURE_VIEW = "taskqueue.api.exceptions.csrf_failure"

INSTALLED_APPS = [
    "taskqueue.apps.ConsoleAdminConfig",  # django.contrib.admin, with the console's site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_tasks",  # Django 5.2: the django.tasks backport (Django 6 has it built in)
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "taskqueue",  # before django_rq: its rqcron command overrides django-rq's
    "django_rq",
    "maintenance",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "taskqueue.api.middleware.BodySizeLimitMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Threads of each web process running Django's views (project/asgi.py).
WEB_THREADS = env_int("WEB_THREADS", 8, minimum=1)
DATABASES = {"default": database_config(VAR_DIR, pool_size=WEB_THREADS)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = redis_url(VAR_DIR)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "cache",
    }
}

_rq_connection = {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 300}
RQ_QUEUES = {name: dict(_rq_connection) for name in ("high", "default", "low")}
# RQ_WORKER_CLASS=rq.worker.Worker: RQ's forking worker (a process per job), for handlers
# that must not share a process (README, "More workers, more hosts").
# Django's Tasks API (`@task`, `.enqueue()`) on this engine: docs/django-tasks.md.
TASKS = {"default": {"BACKEND": "taskqueue.backends.TaskQueueBackend"}}

RQ = {"WORKER_CLASS": env_str("RQ_WORKER_CLASS") or "taskqueue.worker.Worker"}
# django-rq's own dashboard can change jobs behind the mirror's back: not mounted.
RQ_SHOW_ADMIN_LINK = False

TASKQUEUE = {
    "USE_TASK_QUEUE": env_bool("USE_TASK_QUEUE", True),
    # Per-type policy overrides, e.g. {"health_check": {"max_attempts": 3}}.
    "TASK_TYPES": {},
    # The `diagnostic` task type (sleeps, fails or exits on demand) for tests and drills.
    "ENABLE_DIAGNOSTICS": env_bool("TASKQUEUE_DIAGNOSTICS", False),
    "RESULT_TTL": env_int("TASKQUEUE_RESULT_TTL", 3600),
    "FAILURE_TTL": env_int("TASKQUEUE_FAILURE_TTL", 7 * 24 * 3600),
    "MAX_ACTIVE_PER_TYPE": env_int("TASKQUEUE_MAX_ACTIVE_PER_TYPE", 100, minimum=1),
    "JOB_MONITORING_INTERVAL": env_int("TASKQUEUE_JOB_MONITORING_INTERVAL", 30, minimum=1),
    "HEARTBEAT_MARGIN": env_int("TASKQUEUE_HEARTBEAT_MARGIN", 60, minimum=1),
    "RECONCILE_GRACE": env_int("TASKQUEUE_RECONCILE_GRACE", 30),
    "SCHEDULE_GRACE": env_int("TASKQUEUE_SCHEDULE_GRACE", 10),
    # 1 gives every task a fresh work horse (handlers that must not share a process).
    "HORSE_MAX_TASKS": env_int("TASKQUEUE_HORSE_MAX_TASKS", 1000, minimum=1),
    "HORSE_MAX_RSS_MB": env_int("TASKQUEUE_HORSE_MAX_RSS_MB", 512, minimum=16),
    "TASK_RETENTION_DAYS": env_int("TASK_RETENTION_DAYS", 30, minimum=1),
    "FAILED_TASK_RETENTION_DAYS": env_int("FAILED_TASK_RETENTION_DAYS", 90, minimum=1),
    "TOKEN_CACHE_SECONDS": env_int("TASKQUEUE_TOKEN_CACHE_SECONDS", 5),
    "PREPARE_STATEMENTS": env_bool("TASKQUEUE_PREPARE_STATEMENTS", True),
}

LOG_DIR = Path(env_str("LOG_DIR") or VAR_DIR / "log")

MAINTENANCE = {
    "ARTIFACTS_DIR": env_str("ARTIFACTS_DIR") or VAR_DIR / "artifacts",
    "TEMP_DIR": env_str("TEMP_DIR") or VAR_DIR / "tmp",
    "LOG_DIR": LOG_DIR,
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    # Token first: an anonymous API client is told 401 with `WWW-Authenticate: Token`.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "taskqueue.api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
    "DEFAULT_PARSER_CLASSES": ["taskqueue.api.parsers.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "EXCEPTION_HANDLER": "taskqueue.api.exceptions.exception_handler",
    "DEFAULT_THROTTLE_RATES": {"enqueue": env_str("ENQUEUE_THROTTLE_RATE") or "60/min"},
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Task queue for operations",
    "DESCRIPTION": "Maintenance operations run on RQ workers, mirrored durably in the database.",
    "VERSION": "1.0.0",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAdminUser"],
    "SERVE_INCLUDE_SCHEMA": False,  # the schema does not describe its own endpoint
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # No web fonts (no CDN): ReDoc in the system's fonts (templates/drf_spectacular/redoc.html).
    "REDOC_UI_SETTINGS": {
        "theme": {
            "typography": {
                "fontFamily": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
                "headings": {"fontFamily": "system-ui, -apple-system, 'Segoe UI', sans-serif"},
            }
        }
    },
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "taskqueue.api.schema.forbid_unknown_request_properties",
    ],
}

# Who receives the in-product alerts (mail_admins): "Name <addr>,Other <addr2>".
ADMINS = [
    (entry.split("<")[0].strip(), entry.split("<")[-1].rstrip(">").strip())
    for entry in env_list("ADMINS", [])
]
EMAIL_SUBJECT_PREFIX = env_str("EMAIL_SUBJECT_PREFIX") or "[task queue] "
SERVER_EMAIL = env_str("SERVER_EMAIL") or "taskqueue@localhost"
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend"
    if env_str("EMAIL_HOST")
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_HOST = env_str("EMAIL_HOST") or "localhost"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# The console's dates and times: "2026-11-28 22:44:17 UTC", not "Nov. 28, 2026, 10:44 p.m.".
FORMAT_MODULE_PATH = ["project.formats"]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": {"()": "maintenance.logs.LineFormatter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "line"},
        # The documented format (docs/operations.md), rotated at 10 MB into .gz files:
        # what log_statistics reads.
        "file": {
            "()": "maintenance.logs.SharedRotatingFileHandler",
            "filename": str(LOG_DIR / "app.log"),
            "maxBytes": 10 * 1024 * 1024,
            "backupCount": 20,
            "formatter": "line",
        },
    },
    "root": {"handlers": ["console", "file"], "level": env_str("LOG_LEVEL") or "INFO"},
}
