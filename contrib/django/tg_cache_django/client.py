"""A django-redis client that understands tg-cache's fill placeholders."""

from __future__ import annotations

from typing import Any

from django_redis.client import DefaultClient

#: What a tg-cache fill writes at a key while it computes the value. No
#: JSON text and no zlib stream starts with ``#``.
PLACEHOLDER = b"#!lease:"

_MISS = object()


def is_placeholder(value: Any) -> bool:
    """Whether raw bytes read from Redis are a tg-cache fill's placeholder."""
    return isinstance(value, (bytes, bytearray)) and bytes(value[: len(PLACEHOLDER)]) == PLACEHOLDER


class TgCacheClient(DefaultClient):
    """django-redis' ``DefaultClient``, for a Redis shared with tg-cache.

    A key that a tg-cache process is filling holds a placeholder until the
    value is stored; ``get`` and ``get_many`` read it as a miss (the
    default) instead of failing to decode it. Everything else is
    django-redis' own.
    """

    def decode(self, value: bytes | int | str) -> Any:
        if is_placeholder(value):
            return _MISS
        return super().decode(value)

    def get(self, key: str, default: Any | None = None, version: int | None = None, client=None) -> Any:
        value = super().get(key, default=_MISS, version=version, client=client)
        return default if value is _MISS else value

    def get_many(self, keys, version: int | None = None, client=None) -> dict:
        found = super().get_many(keys, version=version, client=client)
        return {k: v for k, v in found.items() if v is not _MISS}
