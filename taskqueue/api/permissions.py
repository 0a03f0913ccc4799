"""Staff only, and each action needs its Django permission."""

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class StaffWithPermission(BasePermission):
    """Authenticated staff holding the permission the view names for this request."""

    message = "You do not have permission to perform this action."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_staff):
            return False
        required = view.required_permission(request)
        return required is None or user.has_perm(required)
