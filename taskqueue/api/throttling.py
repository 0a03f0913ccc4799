"""Per-user throttling of the enqueue POSTs, counted in the shared cache (Redis)."""

from typing import Any

from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle


class EnqueueThrottle(ScopedRateThrottle):
    """ScopedRateThrottle whose rates are read per request, not once at import."""

    @property
    def THROTTLE_RATES(self) -> dict[str, Any]:
        return api_settings.DEFAULT_THROTTLE_RATES
