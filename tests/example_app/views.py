"""A view that enqueues with Django's Tasks API and one that reads the result back."""

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_http_methods

from tests.example_app.tasks import add

try:
    from django.tasks.exceptions import TaskResultDoesNotExist
except ImportError:
    from django_tasks.exceptions import TaskResultDoesNotExist


@login_required
@require_http_methods(["POST"])
def enqueue_add(request: HttpRequest) -> JsonResponse:
    try:
        a, b = int(request.POST["a"]), int(request.POST["b"])
    except (KeyError, ValueError):
        return JsonResponse({"detail": "a and b must be integers"}, status=400)
    result = add.enqueue(a, b)
    return JsonResponse({"id": result.id, "status": result.status}, status=202)


@login_required
def show_result(request: HttpRequest, result_id: str) -> JsonResponse:
    try:
        result = add.get_result(result_id)
    except TaskResultDoesNotExist:
        return JsonResponse({"detail": "no such result"}, status=404)
    body = {"id": result.id, "status": result.status, "attempts": result.attempts}
    if result.is_finished and not result.errors:
        body["value"] = result.return_value
    return JsonResponse(body)
