"""Token authentication with a short per-process cache of token → user.

DRF's `TokenAuthentication` reads the token and its user on every request (a query of
about 1.4 ms of the enqueue POST's 5 ms, measured). Here a token seen in the last
`TOKEN_CACHE_SECONDS` (5 by default; 0 turns the cache off) is answered from memory, with
the user's permissions. A token deleted or saved, a user saved or deleted, a change of a
user's groups or permissions or of a group's permissions empties the cache at once in the
process that made the change, and within that many seconds everywhere else. (Changes made
with `QuerySet.update()` send no signal: they take the full delay.)
"""

import copy
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from taskqueue.conf import conf

MAX_ENTRIES = 1024
_cache: dict[str, tuple[float, Any, Token]] = {}


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        ttl = conf.TOKEN_CACHE_SECONDS
        now = time.monotonic()
        hit = _cache.get(key) if ttl > 0 else None
        if hit is not None and hit[0] > now:
            # A copy per request: attributes set on one request's user never reach another.
            return copy.copy(hit[1]), hit[2]
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed
        if ttl > 0:
            user.get_all_permissions()  # fills the permission caches every copy shares
            if len(_cache) >= MAX_ENTRIES:
                _cache.clear()
            _cache[key] = (now + ttl, user, token)
        return copy.copy(user), token


def forget_tokens(**kwargs: Any) -> None:
    """A token was deleted or a user changed: drop this process's cache."""
    _cache.clear()


post_delete.connect(forget_tokens, sender=Token, dispatch_uid="taskqueue-token-deleted")
post_save.connect(forget_tokens, sender=Token, dispatch_uid="taskqueue-token-saved")
_User = get_user_model()
post_save.connect(forget_tokens, sender=_User, dispatch_uid="taskqueue-user-saved")
post_delete.connect(forget_tokens, sender=_User, dispatch_uid="taskqueue-user-deleted")
for _relation in (
    Group.permissions,
    getattr(_User, "groups", None),
    getattr(_User, "user_permissions", None),
):
    if _relation is not None:
        m2m_changed.connect(
            forget_tokens,
            sender=_relation.through,
            dispatch_uid=f"taskqueue-tokens-{_relation.through._meta.label}",
        )
