"""Per-user throttling of the enqueue POSTs, counted in the shared cache (Redis)."""

import logging
from typing import Any

from rest_framework.request import Request
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

logger = logging.getLogger(__name__)


class EnqueueThrottle(ScopedRateThrottle):
    """ScopedRateThrottle whose rates are read per request, not once at import.

    It fails open: with the cache (Redis) unreachable a request is let through, since the
    task is recorded in the database and dispatched once Redis is back.
    """

    @property
    def THROTTLE_RATES(self) -> dict[str, Any]:
        return api_settings.DEFAULT_THROTTLE_RATES

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except Exception as exc:  # the cache backend raises redis' own errors
            logger.warning("Throttle cache unavailable (%s); letting the request through", exc)
            return True
