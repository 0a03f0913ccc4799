"""Middleware of the API: the request body's size limit, checked before anything reads it."""

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

MAX_BYTES = 64 * 1024  # a request body under /api/ (the JSON parser enforces it too)


class BodySizeLimitMiddleware:
    """413 JSON for an /api/ request whose declared body is over MAX_BYTES, before any
    middleware or view reads it: Django's own limit (DATA_UPLOAD_MAX_MEMORY_SIZE) raises
    outside DRF's exception handler and answers an HTML 400. A body sent without a length
    is cut off by the parser at the same size."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith("/api/"):
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > MAX_BYTES:
                body = {"detail": f"The request body is larger than {MAX_BYTES} bytes.",
                        "code": "request_too_large"}  # fmt: skip
                return JsonResponse(body, status=413)
        return self.get_response(request)
