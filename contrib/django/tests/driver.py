"""The Django side of tests/django_interop.rs: real Django and django-redis
(contrib/django/requirements.txt) on the Redis the Rust test started.

Reads one JSON request per line on stdin, writes one JSON reply per line:
``{"ok": <result>}`` or ``{"error": "<exception>"}``. Usage:
``python driver.py redis://127.0.0.1:<port>/0``.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django
from django.conf import settings

URL = sys.argv[1]


def django_redis(**options):
    return {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": URL,
        "OPTIONS": {"CLIENT_CLASS": "tg_cache_django.TgCacheClient", **options},
    }


JSON = "django_redis.serializers.json.JSONSerializer"
ZLIB = "django_redis.compressors.zlib.ZlibCompressor"

settings.configure(
    INSTALLED_APPS=["interop_app"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={
        # What the configuration guide gives for a cache shared with tg-cache.
        "default": django_redis(SERIALIZER=JSON),
        "zlib": django_redis(SERIALIZER=JSON, COMPRESSOR=ZLIB),
        "app": {**django_redis(SERIALIZER=JSON), "KEY_PREFIX": "app", "VERSION": 2},
        # django-redis without tg-cache's client class.
        "plain": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": URL,
            "OPTIONS": {"SERIALIZER": JSON},
        },
        # The seed's own settings: pickle, with and without zlib.
        "pickle": django_redis(),
        "pickle_zlib": django_redis(COMPRESSOR=ZLIB),
        # Django's built-in Redis backend (pickle).
        "builtin": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": URL},
    },
    USE_TZ=True,
)
django.setup()

from django.core.cache import caches  # noqa: E402
from django.db import connection  # noqa: E402
from django_redis import get_redis_connection  # noqa: E402
from interop_app.models import Character  # noqa: E402

import tg_cache_django  # noqa: E402

with connection.schema_editor() as editor:
    editor.create_model(Character)

# The seed's signal pattern, as tg_cache_django connects it: a save or a
# delete of a Character deletes its queryset key and invalidates the Rust
# side's cached function family.
RECEIVER = tg_cache_django.invalidate_on(
    Character,
    keys=lambda c: [f"tg:queryset:Character:id={c.id}"],
    families=["tg:fn:interop_scenes"],
)


def character_cached(id):
    """Django's cached queryset read (the seed's pattern)."""
    return caches["default"].get_or_set(
        f"tg:queryset:Character:id={id}", lambda: Character.objects.get(id=id).name, 300
    )


def handle(req):
    op = req["op"]
    cache = caches[req.get("cache", "default")]
    if op == "set":
        cache.set(req["key"], req["value"], req.get("timeout", 300))
        return True
    if op == "get":
        miss = object()
        v = cache.get(req["key"], miss)
        return {"found": v is not miss, "value": None if v is miss else v}
    if op == "get_text":
        # The value as Python's json writes it: exact for any integer.
        return json.dumps(cache.get(req["key"]))
    if op == "get_many":
        return cache.get_many(req["keys"])
    if op == "incr":
        return cache.incr(req["key"], req.get("delta", 1))
    if op == "ttl":
        return cache.ttl(req["key"])
    if op == "delete":
        return bool(cache.delete(req["key"]))
    if op == "delete_pattern":
        return cache.delete_pattern(req["pattern"])
    if op == "invalidate_family":
        return tg_cache_django.invalidate_family(req["family"], cache)
    if op == "epoch_key":
        return tg_cache_django.epoch_key(req["family"], cache)
    if op == "clear":
        cache.clear()
        return True
    if op == "raw_get":
        v = get_redis_connection("default").get(req["key"])
        return None if v is None else v.hex()
    if op == "raw_keys":
        return sorted(k.decode() for k in get_redis_connection("default").scan_iter(match=req["pattern"]))
    if op == "character_create":
        Character.objects.create(id=req["id"], chronicle_id=req.get("chronicle", 1), name=req["name"])
        return True
    if op == "character_save":
        c = Character.objects.get(id=req["id"])
        c.name = req["name"]
        c.save()
        return True
    if op == "character_update_quietly":
        # A write that sends no signal (QuerySet.update).
        return Character.objects.filter(id=req["id"]).update(name=req["name"])
    if op == "character_name":
        return Character.objects.get(id=req["id"]).name
    if op == "character_cached":
        return character_cached(req["id"])
    if op == "ping":
        return "pong"
    raise ValueError(f"unknown op {op!r}")


for line in sys.stdin:
    try:
        out = {"ok": handle(json.loads(line))}
    except Exception as e:  # reported to the Rust side
        out = {"error": f"{type(e).__name__}: {e}"}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
