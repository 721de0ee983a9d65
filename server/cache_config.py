"""Triton's `--cache-config=<cache>,<key>=<value>` flags, parsed into one typed cache setting.

Two caches exist, as in Triton: `local` (in the server's memory, `size` bytes) and `redis` (one
shared by all replicas, Triton's redis_cache keys). One cache only, as in Triton, except that
`local` beside `redis` is a near cache in front of it (Triton refuses the pair).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class LocalCacheConfig:
    size: int  # bytes
    entries: int = 0  # at most that many answers too (0: no bound; MLServer's cache_size)


@dataclass(frozen=True, slots=True)
class RedisTls:
    cert: str = ""
    key: str = ""
    cacert: str = ""
    cacert_dir: str = ""
    sni: str = ""


@dataclass(frozen=True, slots=True)
class RedisCacheConfig:
    """Triton's redis_cache settings. Timeouts are in ms; Triton's 0 (wait forever) is kept
    when given, but the default is a bound, so that a hung Redis cannot hang requests."""

    host: str
    port: int
    user: str = ""  # "" = Redis's `default` user
    password: str = ""
    db: int = 0
    connect_timeout_ms: int = 1000
    socket_timeout_ms: int = 1000
    pool_size: int = 1
    wait_timeout_ms: int = 1000
    tls: RedisTls | None = None  # None = plain TCP
    # Bytes of a local cache in front of Redis (`--cache-config local,size=N` beside redis);
    # 0 = none.
    near_size: int = 0


CacheConfig = LocalCacheConfig | RedisCacheConfig

_REDIS_NUMBERS = {
    "port": "port",
    "db": "db",
    "connect_timeout": "connect_timeout_ms",
    "socket_timeout": "socket_timeout_ms",
    "pool_size": "pool_size",
    "wait_timeout": "wait_timeout_ms",
}
_REDIS_TLS = ("cert", "key", "cacert", "cacert_dir", "sni")
_REDIS_KEYS = frozenset({"host", "user", "password", "tls_enabled", *_REDIS_NUMBERS, *_REDIS_TLS})
NO_ADDRESS = (
    "Failed to initialize RedisCache, didn't specify address. Must at a minimum specify 'host' "
    "and 'port' in the configuration - e.g. inferd serve --cache-config redis,host=redis "
    "--cache-config redis,port=6379 --model-repository=/models ..."
)


def parse_cache_config(
    items: Sequence[str], byte_size: int = 0, env: Mapping[str, str] | None = None
) -> CacheConfig | None:
    """`--cache-config` (repeatable) and the deprecated `--response-cache-byte-size=N`, which
    means `local,size=N`. None = no cache. Raises ValueError with Triton's words where it has
    them; unlike Triton, unknown keys are refused rather than ignored (a misspelt `username`
    would otherwise log in as the default user)."""
    if items and byte_size:
        raise ValueError(
            "Incompatible flags --response-cache-byte-size and --cache-config both provided. "
            "Please provide one or the other."
        )
    settings: dict[str, dict[str, str]] = {}
    for item in items:
        cache, comma, setting = item.partition(",")
        key, eq, value = setting.partition("=")
        if not comma:
            raise ValueError(
                "No cache specified. --cache-config option format is "
                f"<cache name>,<setting>=<value>. Got {item}"
            )
        if not eq or not key or not value:
            raise ValueError(
                f"--cache-config option format is '<cache name>,<setting>=<value>'. Got {item}"
            )
        settings.setdefault(cache, {})[key] = value  # the last of a repeated key wins
    if set(settings) == {"local", "redis"}:  # beyond Triton: a near cache in front of Redis
        near = _local(settings["local"])
        redis = _redis(settings["redis"], os.environ if env is None else env)
        return replace(redis, near_size=near.size if near is not None else 0)
    if len(settings) > 1:
        raise ValueError(
            "found multiple cache configurations, but only a single cache is currently supported"
        )
    if not settings:
        return LocalCacheConfig(byte_size) if byte_size else None
    ((cache, values),) = settings.items()
    if cache == "local":
        return _local(values)
    if cache == "redis":
        return _redis(values, os.environ if env is None else env)
    raise ValueError(f"--cache-config: there is no cache {cache!r}; inferd has 'local' and 'redis'")


def _local(values: dict[str, str]) -> LocalCacheConfig | None:
    unknown = sorted(set(values) - {"size"})
    if unknown:
        raise ValueError(f"--cache-config: the local cache takes only 'size', not {unknown}")
    size = values.get("size", "0")
    if not size.isdigit():
        raise ValueError(f"--cache-config local,size={size}: size must be a number of bytes")
    return LocalCacheConfig(int(size)) if int(size) else None


def _redis(values: dict[str, str], env: Mapping[str, str]) -> RedisCacheConfig:
    unknown = sorted(set(values) - _REDIS_KEYS)
    if unknown:
        raise ValueError(
            f"--cache-config: the redis cache has no setting {', '.join(unknown)}; it takes "
            f"{', '.join(sorted(_REDIS_KEYS))}"
        )
    if "host" not in values or "port" not in values:
        raise ValueError(NO_ADDRESS)
    numbers: dict[str, int] = {}
    for key, field in _REDIS_NUMBERS.items():
        if key in values:
            if not values[key].isdigit():
                raise ValueError(
                    f"--cache-config redis,{key}={values[key]}: {key} must be a whole number"
                )
            numbers[field] = int(values[key])
    if numbers.get("pool_size") == 0:
        raise ValueError("--cache-config redis,pool_size=0: the pool needs a connection")
    # As Triton's: the variables first, the flags over them.
    user = values.get("user", env.get("TRITONCACHE_REDIS_USERNAME", ""))
    password = values.get("password", env.get("TRITONCACHE_REDIS_PASSWORD", ""))
    # As Triton's: TLS only with tls_enabled=true; its files are ignored without it.
    tls = (
        RedisTls(**{key: values.get(key, "") for key in _REDIS_TLS})
        if values.get("tls_enabled") == "true"
        else None
    )
    return RedisCacheConfig(host=values["host"], user=user, password=password, tls=tls, **numbers)
