"""Admin views: the task page's live block, Cancel/Stop/Retry, the dashboard, the icon."""

from datetime import timedelta
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import (
    HttpRequest,
    HttpResponse,
    HttpResponsePermanentRedirect,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import get_object_or_404
from django.template.loader import render_to_string, select_template
from django.template.response import TemplateResponse
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from taskqueue.admin.charts import throughput_svg
from taskqueue.admin.display import (
    duration,
    pretty_json,
    run_seconds,
    status_badge,
    wait_seconds,
)
from taskqueue.api.serializers import TaskDetailSerializer
from taskqueue.conf import conf
from taskqueue.exceptions import TaskQueueError
from taskqueue.models import Task
from taskqueue.services import CANCELLED, cancel_task, monitoring, retry_task
from taskqueue.services.stats import recent_failures, task_stats, throughput_by_hour

FAVICON = "taskqueue/favicon.svg"


def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers ask for on every page: the console's icon."""
    return HttpResponsePermanentRedirect(static(FAVICON))


def _require(request: HttpRequest, permission: str) -> None:
    if not request.user.has_perm(permission):
        raise PermissionDenied


def task_context(request: HttpRequest, task: Task) -> dict[str, Any]:
    """What the task page and its live block render."""
    detail = TaskDetailSerializer(task).data
    result_template = select_template(
        [f"admin/results/{task.task_type}.html", "admin/results/default.html"]
    )
    # A type's own template shows the result for people; the JSON stays a click away.
    custom = result_template.origin.template_name != "admin/results/default.html"
    return {
        "task": task,
        "badge": status_badge(task.status),
        "attempt_rows": detail["attempt_history"],
        "payload_html": pretty_json(task.payload),
        "result_html": result_template.render({"result": task.result, "task": task})
        if task.result is not None
        else "",
        "result_json": pretty_json(task.result) if custom and task.result is not None else "",
        "wait": duration(wait_seconds(task)),
        "run": duration(run_seconds(task)),
        "can_operate": request.user.has_perm("taskqueue.change_task"),
        "show_traceback": request.user.is_superuser and bool(task.error_traceback),
        "retries": list(task.retries.order_by("pk").only("pk", "status")),
        "live_url": reverse("admin:taskqueue_task_live", args=[task.pk]),
        "events_url": reverse("taskqueue-task-events", args=[task.pk]),
    }


def live(request: HttpRequest, task_id: int) -> JsonResponse:
    """The live block of a task page, re-rendered, for the page to swap in."""
    _require(request, "taskqueue.view_task")
    task = get_object_or_404(
        Task.objects.with_attempt_history().select_related("requested_by", "cancelled_by"),
        pk=task_id,
    )
    html = render_to_string(
        "admin/taskqueue/task/live_block.html", task_context(request, task), request=request
    )
    return JsonResponse(
        {"status": task.status, "active": not task.is_terminal, "html": html},
        headers={"Cache-Control": "no-store"},
    )


@require_http_methods(["GET", "POST"])
def cancel(request: HttpRequest, task_id: int) -> HttpResponse:
    """GET: a confirmation page; POST: cancel (waiting) or stop (running) the task."""
    _require(request, "taskqueue.change_task")
    task = get_object_or_404(Task, pk=task_id)
    page = reverse("admin:taskqueue_task_change", args=[task.pk])
    if request.method == "GET":
        context = {
            **admin.site.each_context(request),
            "title": f"{'Stop' if task.status == Task.Status.LEASED else 'Cancel'} task {task.pk}?",
            "task": task,
            "opts": Task._meta,
            "back": page,
        }
        return TemplateResponse(request, "admin/taskqueue/task/confirm_cancel.html", context)
    try:
        outcome = cancel_task(task, by=request.user)
    except TaskQueueError as exc:
        messages.error(request, f"Task {task.pk} was not cancelled: {exc.message}")
        return HttpResponseRedirect(page)
    if outcome == CANCELLED:
        messages.success(request, f"Task {task.pk} is cancelled; it will not run.")
    else:
        messages.info(request, f"Task {task.pk}: a stop was sent to its worker.")
    return HttpResponseRedirect(page)


@require_http_methods(["POST"])
def retry(request: HttpRequest, task_id: int) -> HttpResponse:
    _require(request, "taskqueue.change_task")
    task = get_object_or_404(Task, pk=task_id)
    try:
        new = retry_task(task, by=request.user, source="admin")
    except TaskQueueError as exc:
        messages.error(request, f"Task {task.pk} was not retried: {exc.message}")
        return HttpResponseRedirect(reverse("admin:taskqueue_task_change", args=[task.pk]))
    messages.success(request, f"Task {task.pk} retried as task {new.pk}.")
    return HttpResponseRedirect(reverse("admin:taskqueue_task_change", args=[new.pk]))


def dashboard(request: HttpRequest) -> HttpResponse:
    """The whole system at a glance; `?fragment=1` returns just the body, for refreshes."""
    _require(request, "taskqueue.view_task")
    context = dashboard_context()
    if request.GET.get("fragment"):
        return HttpResponse(render_to_string("admin/taskqueue/dashboard_body.html", context))
    context.update(admin.site.each_context(request), title="Task queue dashboard", opts=Task._meta)
    context["events_url"] = reverse("taskqueue-events")
    return TemplateResponse(request, "admin/taskqueue/dashboard.html", context)


def dashboard_context() -> dict[str, Any]:
    try:
        queues, workers = monitoring.queue_stats(), monitoring.worker_stats()
    except Exception:  # Redis down: the database half still renders
        queues = workers = None
    idle_waits = monitoring.waiting_while_idle(queues, workers) if queues is not None else []
    for queue in queues or ():
        queue["idle_wait"] = queue["name"] in idle_waits
    stats = task_stats()
    rates = {
        label: monitoring.failure_rate_alert(window)
        for label, window in (("1 h", timedelta(hours=1)), ("24 h", timedelta(hours=24)))
    }
    types = sorted(set(stats["run_seconds"]) | set(stats["wait_seconds"]))
    return {
        "queues": queues,
        "workers": workers,
        "idle_waits": [q for q in queues or () if q["idle_wait"]],
        "counts": stats["counts_by_status"],
        "rates": rates,
        "threshold": conf.FAILURE_RATE_THRESHOLD,
        "durations": [_duration_row(name, stats) for name in types],
        "chart": throughput_svg(throughput_by_hour()),
        "failures": recent_failures(),
    }


def _duration_row(name: str, stats: dict[str, Any]) -> dict[str, Any]:
    wait, run = stats["wait_seconds"].get(name, {}), stats["run_seconds"].get(name, {})
    return {
        "type": name,
        "count": run.get("count", 0),
        "wait_p50": duration(wait.get("p50")),
        "wait_p95": duration(wait.get("p95")),
        "run_p50": duration(run.get("p50")),
        "run_p95": duration(run.get("p95")),
    }
