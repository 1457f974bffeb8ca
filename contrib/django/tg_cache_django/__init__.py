"""Share one Redis between a Django application and tg-cache (Rust).

Configure the Rust side with ``TG_CACHE_KEY_FUNCTION=django`` (or
``CacheConfig::key_function(KeyFunction::Django)``) and the same
``KEY_PREFIX``/``VERSION``, and Django's cache with::

    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": os.environ["REDIS_URL"],
            "OPTIONS": {
                "CLIENT_CLASS": "tg_cache_django.TgCacheClient",
                "SERIALIZER": "django_redis.serializers.json.JSONSerializer",
                # optional, on both sides or on none:
                "COMPRESSOR": "django_redis.compressors.zlib.ZlibCompressor",
            },
        }
    }

What this package adds to django-redis:

* :class:`TgCacheClient` reads a key that a tg-cache process is filling
  (its placeholder, ``#!lease:...``) as a miss, never as a JSON error.
* :func:`invalidate_family` invalidates a tg-cache key family from Django:
  it refuses the fills in progress in every tg-cache process (the family's
  epoch) and deletes the family's keys.
* :func:`invalidate_on` connects ``post_save``/``post_delete`` receivers
  that do either.

A plain ``cache.delete(key)`` from Django already defeats a tg-cache fill
of that key that is in progress: the fill's placeholder is at the key, and
the fill stores only over its own placeholder.
"""

from .client import PLACEHOLDER, TgCacheClient
from .invalidation import epoch_key, glob_escape, invalidate_family, invalidate_on

__all__ = [
    "PLACEHOLDER",
    "TgCacheClient",
    "epoch_key",
    "glob_escape",
    "invalidate_family",
    "invalidate_on",
]
