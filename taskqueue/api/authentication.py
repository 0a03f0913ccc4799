"""Token authentication with a per-process cache of token → user, invalidated everywhere.

DRF's `TokenAuthentication` reads the token and its user on every request, and the
permission checks then read the user's and groups' permissions (three queries, about
1.4 ms of the enqueue POST's 5 ms, measured). Here a token seen in the last
`TOKEN_CACHE_SECONDS` (5 by default; 0 turns the cache off) is answered from memory, with
the user's permissions, as long as the **auth generation** in Redis has not moved.

A token deleted or saved, a user saved or deleted (its active or staff flag), a change of a
user's groups or permissions or of a group's permissions increments that counter once the
change commits: the next request in every web process reads the new generation (one GET)
and goes back to the database. Entries carry the generation read *before* their database
read, so a request racing a commit can never cache the old row under the new generation.
When Redis does not answer, nothing is cached or served from the cache. (Changes made with
`QuerySet.update()` send no signal: those take up to TOKEN_CACHE_SECONDS.)
"""

import copy
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save
from rest_framework.authentication import TokenAuthentication
from rest_framework.authtoken.models import Token

from taskqueue import backend
from taskqueue.conf import conf

MAX_ENTRIES = 1024
# token key -> (expires at, auth generation, user, token)
_cache: dict[str, tuple[float, int, Any, Token]] = {}


class CachedTokenAuthentication(TokenAuthentication):
    def authenticate_credentials(self, key: str) -> tuple[Any, Token]:
        ttl = conf.TOKEN_CACHE_SECONDS
        generation = backend.auth_generation() if ttl > 0 else None
        now = time.monotonic()
        hit = _cache.get(key) if generation is not None else None
        if hit is not None and hit[0] > now and hit[1] == generation:
            # A copy per request: attributes set on one request's user never reach another.
            return copy.copy(hit[2]), hit[3]
        user, token = super().authenticate_credentials(key)  # raises AuthenticationFailed
        if generation is not None:
            user.get_all_permissions()  # fills the permission caches every copy shares
            if len(_cache) >= MAX_ENTRIES:
                _cache.clear()
            _cache[key] = (now + ttl, generation, user, token)
        return copy.copy(user), token


def forget_tokens(**kwargs: Any) -> None:
    """A token, a user or a permission changed: drop this process's cache now, and every
    process's once the change is committed (before, another process would re-read and
    cache the old row)."""
    _cache.clear()
    transaction.on_commit(_forget_everywhere, robust=True)


def _forget_everywhere() -> None:
    _cache.clear()
    backend.bump_auth_generation()


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
