"""The project's URLs plus the reference: a bare view doing one INSERT and one enqueue."""

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from taskqueue import backend
from taskqueue.models import Task


@csrf_exempt
def bare_enqueue(request: HttpRequest) -> JsonResponse:
    """What any "insert then enqueue" endpoint costs, with nothing else around it."""
    task = Task.objects.create(task_type="health_check", queue="default")
    transaction.on_commit(lambda: backend.get_queue("low").enqueue("bench.jobs.noop"))
    return JsonResponse({"task_id": task.pk}, status=202)


urlpatterns = [path("bench/bare-enqueue", bare_enqueue), path("", include("project.urls"))]
