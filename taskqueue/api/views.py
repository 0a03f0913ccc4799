"""REST views over tasks (list, read, cancel, retry), statistics, and enqueueing."""

from typing import Any, ClassVar

from django.urls import reverse
from django.utils.cache import get_conditional_response
from django.utils.http import http_date
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from taskqueue.api.permissions import StaffWithPermission
from taskqueue.api.serializers import (
    EnqueuedSerializer,
    ErrorSerializer,
    ScheduleSerializer,
    TaskDetailSerializer,
    TaskFilterSerializer,
    TaskListSerializer,
    TaskSerializer,
)
from taskqueue.api.throttling import EnqueueThrottle
from taskqueue.conf import conf
from taskqueue.models import MAX_ID, Schedule, Task
from taskqueue.registry import get_task_type
from taskqueue.services import CANCELLED, cancel_task, enqueue_task, retry_task
from taskqueue.services.stats import system_stats


def errors(*codes: int) -> dict[int, OpenApiResponse]:
    return {code: OpenApiResponse(ErrorSerializer) for code in codes}


class TaskPagination(CursorPagination):
    ordering = "-id"  # newest first; stable under inserts
    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100

    def decode_cursor(self, request: Request) -> Any:
        """DRF answers a cursor it cannot read with 404; it is bad input: 400."""
        try:
            return super().decode_cursor(request)
        except NotFound:
            raise serializers.ValidationError({"cursor": ["Invalid cursor."]}) from None

    def get_page_size(self, request: Request) -> int:
        """1 to 100; anything else is refused, not ignored."""
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None:
            return self.page_size
        if not raw.isdigit() or not 1 <= int(raw) <= self.max_page_size:
            message = f"A whole number from 1 to {self.max_page_size}."
            raise serializers.ValidationError({"page_size": [message]})
        return int(raw)

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"] |= {"minimum": 1, "maximum": self.max_page_size}
        return parameters


class TaskViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Tasks, newest first: read (`view_task`), cancel and retry (`change_task`)."""

    serializer_class = TaskSerializer
    permission_classes = [StaffWithPermission]
    pagination_class = TaskPagination
    lookup_value_regex = r"[0-9]{1,19}"

    def required_permission(self, request: Request) -> str:
        if self.action in ("destroy", "retry"):
            return "taskqueue.change_task"
        return "taskqueue.view_task"

    def get_serializer_class(self) -> type[TaskSerializer]:
        return TaskListSerializer if self.action == "list" else TaskSerializer

    def get_queryset(self) -> Any:
        queryset = Task.objects.select_related("requested_by", "cancelled_by")
        if self.action == "retrieve":
            return queryset.with_attempt_history()
        if self.action != "list":
            return queryset
        filters = TaskFilterSerializer(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        wanted = filters.validated_data
        if wanted.get("status"):
            queryset = queryset.filter(status__in=wanted["status"])
        if wanted.get("task_type"):
            queryset = queryset.filter(task_type=wanted["task_type"])
        if wanted.get("created_after"):
            queryset = queryset.filter(created_at__gte=wanted["created_after"])
        if wanted.get("created_before"):
            queryset = queryset.filter(created_at__lt=wanted["created_before"])
        return queryset

    def get_object(self) -> Task:
        if int(self.kwargs["pk"]) > MAX_ID:
            raise Task.DoesNotExist
        return super().get_object()

    @extend_schema(
        parameters=[TaskFilterSerializer],
        responses={200: TaskListSerializer, **errors(400, 401, 403)},
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(responses={200: TaskDetailSerializer, 304: None, **errors(401, 403, 404)})
    def retrieve(self, request: Request, pk: str) -> Response:
        """One task with its attempts. Answers 304 to a matching If-None-Match.

        A conditional request reads the task's `updated_at` first, and the task with its
        attempts only when it changed: polling an unchanged task costs an index look-up.
        """
        conditional = "If-None-Match" in request.headers or "If-Modified-Since" in request.headers
        if conditional and int(pk) <= MAX_ID:
            stamp = Task.objects.filter(pk=pk).values_list("updated_at", flat=True).first()
            if stamp is not None:
                etag, modified = _validators(int(pk), stamp)
                not_modified = get_conditional_response(
                    request._request, etag=etag, last_modified=int(modified)
                )
                if not_modified is not None:
                    return _with_validators(not_modified, etag, modified)
        task = self.get_object()
        etag, modified = _validators(task.pk, task.updated_at)
        return _with_validators(Response(TaskDetailSerializer(task).data), etag, modified)

    @extend_schema(
        responses={
            200: OpenApiResponse(TaskSerializer, description="Cancelled at once."),
            202: OpenApiResponse(TaskSerializer, description="Stop sent to the worker."),
            **errors(401, 403, 404, 409),
        }
    )
    def destroy(self, request: Request, pk: str) -> Response:
        """Cancel a queued or retrying task (200), or stop a running one (202)."""
        task = self.get_object()
        outcome = cancel_task(task, by=request.user)  # the transition updates `task` too
        code = status.HTTP_200_OK if outcome == CANCELLED else status.HTTP_202_ACCEPTED
        return Response(TaskSerializer(task).data, status=code)

    @extend_schema(request=None, responses={202: TaskSerializer, **errors(401, 403, 404, 409, 429)})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: str) -> Response:
        """A new task with the same type and payload as a finished one."""
        task = self.get_object()
        new = retry_task(task, by=request.user, source="api")
        response = Response(TaskSerializer(new).data, status=status.HTTP_202_ACCEPTED)
        response["Location"] = reverse("taskqueue-task-detail", args=[new.pk])
        return response


class StatsView(APIView):
    """Queue depth, workers, counts by status, failure rates, run and wait percentiles."""

    permission_classes = [StaffWithPermission]

    def required_permission(self, request: Request) -> str:
        return "taskqueue.view_task"

    @extend_schema(responses={200: dict, **errors(401, 403)})
    def get(self, request: Request) -> Response:
        return Response(system_stats())


def _validators(task_id: int, updated_at: Any) -> tuple[str, float]:
    """A task's ETag (it changes with every transition) and Last-Modified timestamp."""
    return f'"{task_id}-{int(updated_at.timestamp() * 1_000_000)}"', updated_at.timestamp()


def _with_validators(response: Any, etag: str, modified: float) -> Any:
    response["ETag"] = etag
    response["Last-Modified"] = http_date(modified)
    response["Cache-Control"] = "private, no-cache"
    return response


class EnqueueView(APIView):
    """GET describes the operation; POST enqueues it (202) and answers with the task id."""

    task_type: ClassVar[str] = ""
    permission_classes = [StaffWithPermission]

    def get_throttles(self) -> list[Any]:
        return [EnqueueThrottle()] if self.request.method == "POST" else []

    def required_permission(self, request: Request) -> str:
        return get_task_type(self.task_type).policy.permission or "taskqueue.add_task"

    def get(self, request: Request) -> Response:
        spec = get_task_type(self.task_type)
        policy = spec.policy
        fields = spec.serializer().fields if spec.serializer else {}
        return Response(
            {
                "task_type": spec.name,
                "description": spec.description,
                "parameters": {name: _describe(field) for name, field in fields.items()},
                "policy": {
                    "max_attempts": policy.max_attempts,
                    "timeout": policy.timeout,
                    "priority": policy.priority,
                    "queue": policy.queue,
                    "exclusive": policy.exclusive,
                },
            }
        )

    def post(self, request: Request) -> Response:
        query = {k: v for k, v in request.query_params.items() if k != "format"}
        body = request.data
        if not isinstance(body, dict):  # a JSON null, list, string or number
            raise serializers.ValidationError({"payload": ["Expected a JSON object."]})
        if query and body:  # both are validated; for a parameter given twice, the body wins
            get_task_type(self.task_type).validate_payload(query)
        payload = {**query, **body}
        task, created = enqueue_task(
            self.task_type, payload, requested_by=request.user, source="api"
        )
        location = reverse("taskqueue-task-detail", args=[task.pk])
        if not conf.USE_TASK_QUEUE:
            task.refresh_from_db()
            response = Response(TaskSerializer(task).data, status=status.HTTP_200_OK)
        elif created:
            message = f"{self.task_type} enqueued as task {task.pk}."
            body = {"task_id": task.pk, "status": task.status, "message": message}
            response = Response(body, status=status.HTTP_202_ACCEPTED)
        else:
            message = f"An identical {self.task_type} task is already {task.status}."
            body = {"task_id": task.pk, "status": task.status, "message": message}
            response = Response(body, status=status.HTTP_200_OK)
        response["Location"] = location
        return response


def _describe(field: serializers.Field) -> dict[str, Any]:
    described: dict[str, Any] = {"type": type(field).__name__, "required": field.required}
    for attribute in ("min_value", "max_value"):
        if getattr(field, attribute, None) is not None:
            described[attribute] = getattr(field, attribute)
    if field.default is not serializers.empty:
        described["default"] = field.default
    if field.help_text:
        described["help_text"] = str(field.help_text)
    return described


def enqueue_view(task_type: str) -> type[EnqueueView]:
    """An EnqueueView for `task_type`, documented with its payload serializer."""
    spec = get_task_type(task_type)
    name = "".join(part.title() for part in task_type.split("_")) + "View"
    view = type(name, (EnqueueView,), {"task_type": task_type, "__doc__": spec.description})
    post = extend_schema(
        summary=f"Enqueue {task_type}",
        description=(
            f"{spec.description} Parameters as a JSON body or as query parameters (or "
            "both: each is validated, and for a parameter given in both the body's value "
            "is used). "
            "202 with the new task's id; 200 with the active task when an identical one "
            "is already active (exclusive types) or, with USE_TASK_QUEUE off, with the "
            "finished task."
        ),
        request=spec.serializer,
        parameters=[
            OpenApiParameter(
                name,
                type=_parameter_schema(field),
                required=False,
                description=f"As in the body. {field.help_text or ''}".strip(),
            )
            for name, field in (spec.serializer().fields if spec.serializer else {}).items()
        ],
        responses={
            202: EnqueuedSerializer,
            200: OpenApiResponse(EnqueuedSerializer, description="Already active, or inline."),
            **errors(400, 401, 403, 413, 415, 429, 503),
        },
    )
    get = extend_schema(summary=f"Describe {task_type}", responses={200: dict, **errors(401, 403)})
    # Fresh functions: extend_schema annotates the function object it decorates.

    def post_method(self: EnqueueView, request: Request) -> Response:
        return EnqueueView.post(self, request)

    def get_method(self: EnqueueView, request: Request) -> Response:
        return EnqueueView.get(self, request)

    view.post = post(post_method)  # type: ignore[method-assign]
    view.get = get(get_method)  # type: ignore[method-assign]
    return view


def _parameter_schema(field: serializers.Field) -> dict[str, Any]:
    """A payload field as a query parameter's schema, with its bounds."""
    if isinstance(field, serializers.BooleanField):
        return {"type": "boolean"}
    schema: dict[str, Any] = {"type": "integer"}
    if getattr(field, "min_value", None) is not None:
        schema["minimum"] = field.min_value
    if getattr(field, "max_value", None) is not None:
        schema["maximum"] = field.max_value
    return schema


class ApiRootView(APIView):
    """The API's entry points: the operations, the tasks, statistics, schedules, the live
    event stream, Prometheus metrics, and the OpenAPI schema with its two documentations."""

    # Staff only, as every endpoint it lists (each checks its own permission too).
    ROUTES: ClassVar[dict[str, dict[str, str]]] = {
        "operations": {
            "cleanup_runs": "maintenance-cleanup-runs",
            "health_check": "maintenance-health-check",
            "cleanup_temp_files": "maintenance-cleanup-temp-files",
            "log_statistics": "maintenance-log-statistics",
        },
        "resources": {
            "tasks": "taskqueue-task-list",
            "stats": "taskqueue-stats",
            "schedules": "taskqueue-schedule-list",
            "events": "taskqueue-events",
            "metrics": "metrics",
        },
        "documentation": {"schema": "schema", "docs": "swagger-ui", "redoc": "redoc"},
    }

    @extend_schema(summary="The API's entry points", responses={200: dict, **errors(401, 403)})
    def get(self, request: Request) -> Response:
        link = request.build_absolute_uri
        return Response(
            {
                group: {key: link(reverse(name)) for key, name in routes.items()}
                for group, routes in self.ROUTES.items()
            }
        )


class PlainTextRenderer(BaseRenderer):
    media_type = "text/plain"
    format = "txt"
    charset = "utf-8"

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> Any:
        return data if isinstance(data, bytes) else str(data).encode()


class MetricsView(APIView):
    """Prometheus exposition format; token or staff session with taskqueue.view_task."""

    permission_classes = [StaffWithPermission]
    renderer_classes = [PlainTextRenderer]

    def required_permission(self, request: Request) -> str:
        return "taskqueue.view_task"

    @extend_schema(responses={(200, "text/plain"): str, **errors(401, 403)})
    def get(self, request: Request) -> Response:
        from taskqueue import metrics

        return Response(metrics.render(), content_type="text/plain; version=0.0.4; charset=utf-8")


class ScheduleViewSet(viewsets.ReadOnlyModelViewSet):
    """Periodic schedules, read-only (operators edit them in the admin)."""

    serializer_class = ScheduleSerializer
    queryset = Schedule.objects.order_by("name")
    permission_classes = [StaffWithPermission]
    lookup_value_regex = r"[0-9]{1,18}"

    def required_permission(self, request: Request) -> str:
        return "taskqueue.view_schedule"

    @extend_schema(responses={200: ScheduleSerializer, **errors(401, 403, 404)})
    def retrieve(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().retrieve(request, *args, **kwargs)

    @extend_schema(responses={200: ScheduleSerializer(many=True), **errors(401, 403)})
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)
