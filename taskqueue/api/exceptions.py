"""One place that maps errors to HTTP: JSON bodies with `detail` and a stable `code`."""

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import csrf, defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from taskqueue import exceptions as domain

logger = logging.getLogger(__name__)

DOMAIN_STATUS = {
    domain.TaskNotFound: status.HTTP_404_NOT_FOUND,
    domain.UnknownTaskType: status.HTTP_404_NOT_FOUND,
    domain.InvalidTransition: status.HTTP_409_CONFLICT,
    domain.TooManyActiveTasks: status.HTTP_429_TOO_MANY_REQUESTS,
    domain.QueueUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
    domain.InvalidPayload: status.HTTP_400_BAD_REQUEST,
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is down or out of connections: say so, and when to come back.
        logger.warning("Database unavailable for %s: %s", context.get("view"), exc)
        body = {"detail": "The database is unavailable; try again shortly.",
                "code": "database_unavailable"}  # fmt: skip
        return Response(
            body, status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"}
        )
    if isinstance(exc, domain.InvalidPayload):
        return _validation_response(exc.errors, status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, domain.TaskQueueError):
        code = DOMAIN_STATUS.get(type(exc), status.HTTP_400_BAD_REQUEST)
        response = Response({"detail": exc.message, "code": exc.code}, status=code)
        if code == status.HTTP_429_TOO_MANY_REQUESTS:
            response["Retry-After"] = "30"
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        return _validation_response(response.data, response.status_code, response)
    detail = response.data.get("detail") if isinstance(response.data, dict) else response.data
    response.data = {"detail": str(detail), "code": _code(exc)}
    return response


def _validation_response(errors: Any, code: int, response: Response | None = None) -> Response:
    body = dict(errors) if isinstance(errors, dict) else {"errors": errors}
    body.setdefault("detail", "Invalid input.")
    body["code"] = "invalid"
    if response is None:
        return Response(body, status=code)
    response.data = body
    return response


def _code(exc: Exception) -> str:
    codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
    return codes if isinstance(codes, str) else "error"


@csrf_exempt  # a POST to a URL that does not exist is a 404, not a CSRF failure
def api_not_found(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """404 for any /api/ URL that matches no route (JSON, like every API error)."""
    return JsonResponse({"detail": "Not found.", "code": "not_found"}, status=404)


def is_api(request: HttpRequest) -> bool:
    """A request to the JSON API (the browsable API's login pages are HTML)."""
    return request.path.startswith("/api/") and not request.path.startswith("/api/auth/")


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """Django's 400 (a SuspiciousOperation: a bad Host, too many fields), as JSON under /api/."""
    if not is_api(request):
        return defaults.bad_request(request, exception)
    return JsonResponse({"detail": "Bad request.", "code": "bad_request"}, status=400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if not is_api(request):
        return defaults.permission_denied(request, exception)
    body = {"detail": "You do not have permission to perform this action.",
            "code": "permission_denied"}  # fmt: skip
    return JsonResponse(body, status=403)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: JSON under /api/ (Django's page elsewhere)."""
    if not is_api(request):
        return csrf.csrf_failure(request, reason)
    return JsonResponse({"detail": f"CSRF failed: {reason}", "code": "csrf_failed"}, status=403)


def server_error(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
    """500 without a traceback, a path or a setting."""
    return JsonResponse({"detail": "Internal server error.", "code": "server_error"}, status=500)
