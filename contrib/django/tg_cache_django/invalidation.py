"""Invalidating tg-cache key families from Django."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from typing import Any

_GLOB = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a Redis glob pattern that matches only itself."""
    return _GLOB.sub(r"\\\1", text)


def _cache(cache: Any | None) -> Any:
    if cache is None:
        from django.core.cache import cache as default

        return default
    if isinstance(cache, str):
        from django.core.cache import caches

        return caches[cache]
    return cache


def epoch_key(family: str, cache: Any | None = None, version: int | None = None) -> str:
    """The Redis key of a tg-cache family's epoch: ``<prefix>:<version>:#epoch:<family>``."""
    return str(_cache(cache).client.make_key("#epoch:" + family, version=version))


def invalidate_family(family: str, cache: Any | None = None, version: int | None = None) -> int:
    """Invalidates a tg-cache key family (``tg:queryset:Character``,
    ``tg:fn:char_scenes``) as tg-cache's ``invalidate_family`` does on a
    cache shared with Django.

    First the family's epoch is replaced (when it exists): every tg-cache
    fill of the family that is in progress, in any process, then stores
    nothing. Then the family's own key and every ``<family>:*`` key are
    deleted (a ``SCAN``, as ``delete_pattern``). Returns how many keys were
    deleted. ``cache`` is a cache alias or object (``default`` if omitted).
    """
    if not family.startswith("tg:") or family.count(":") != 2 or any(c in family for c in "*?[]\\ "):
        raise ValueError(f"not a tg-cache key family (tg:<kind>:<name>): {family!r}")
    cache = _cache(cache)
    client = cache.client.get_client(write=True)
    # A new random token, never an incremented one: an epoch never comes
    # back. XX: a family without an epoch has no fill in progress.
    client.set(epoch_key(family, cache, version), secrets.token_hex(16), xx=True, keepttl=True)
    deleted = int(cache.delete(family, version=version) or 0)
    deleted += cache.delete_pattern(glob_escape(family) + ":*", version=version)
    return deleted


def invalidate_on(
    sender: Any,
    *,
    keys: Callable[[Any], Iterable[str]] | None = None,
    families: Iterable[str] = (),
    cache: Any | None = None,
) -> Callable[..., None]:
    """Connects a ``post_save`` and ``post_delete`` receiver for ``sender``
    that deletes ``keys(instance)`` and invalidates ``families``. Returns
    the receiver (keep it: signals hold receivers weakly).

    ::

        invalidate_on(
            Character,
            keys=lambda c: [f"tg:queryset:Character:id={c.id}"],
            families=["tg:fn:char_scenes"],
        )
    """
    from django.db.models.signals import post_delete, post_save

    families = list(families)

    def receiver(sender: Any, instance: Any, **kwargs: Any) -> None:
        target = _cache(cache)
        if keys is not None:
            names = list(keys(instance))
            if names:
                target.delete_many(names)
        for family in families:
            invalidate_family(family, target)

    post_save.connect(receiver, sender=sender, weak=False)
    post_delete.connect(receiver, sender=sender, weak=False)
    return receiver
