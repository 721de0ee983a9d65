"""`--cache-config` parsed: the local and redis caches, Triton's words for its errors."""

from __future__ import annotations

import pytest

from inferd.server.cache_config import (
    NO_ADDRESS,
    LocalCacheConfig,
    RedisCacheConfig,
    RedisTls,
    parse_cache_config,
)


def parse(*items: str, byte_size: int = 0, env: dict[str, str] | None = None) -> object:
    return parse_cache_config(items, byte_size, env or {})


def test_the_local_cache_and_the_deprecated_flag() -> None:
    assert parse("local,size=1024") == LocalCacheConfig(1024)
    assert parse(byte_size=2048) == LocalCacheConfig(2048)
    assert parse() is None
    assert parse("local,size=0") is None


def test_redis_settings() -> None:
    cache = parse(
        "redis,host=cache.svc",
        "redis,port=6380",
        "redis,db=2",
        "redis,pool_size=8",
        "redis,connect_timeout=0",  # Triton's "wait forever" stays available
        "redis,socket_timeout=250",
        "redis,wait_timeout=50",
        "redis,user=inferd",
        "redis,password=s3cret",
    )
    assert cache == RedisCacheConfig(
        host="cache.svc",
        port=6380,
        user="inferd",
        password="s3cret",
        db=2,
        connect_timeout_ms=0,
        socket_timeout_ms=250,
        pool_size=8,
        wait_timeout_ms=50,
    )
    # The last of a repeated key wins.
    assert parse("redis,host=a", "redis,port=1", "redis,host=b") == RedisCacheConfig("b", 1)


def test_local_beside_redis_is_a_near_cache() -> None:
    address = ("redis,host=h", "redis,port=6379")
    assert parse(*address, "local,size=4096") == RedisCacheConfig("h", 6379, near_size=4096)
    assert parse("local,size=0", *address) == RedisCacheConfig("h", 6379)


def test_redis_tls_only_when_enabled_as_in_triton() -> None:
    files = ("redis,cert=c.pem", "redis,key=k.pem", "redis,cacert=ca.pem", "redis,sni=cache")
    address = ("redis,host=h", "redis,port=6379")
    assert parse(*address, *files) == RedisCacheConfig("h", 6379)  # no tls_enabled: plain
    assert parse(*address, *files, "redis,tls_enabled=false") == RedisCacheConfig("h", 6379)
    cache = parse(*address, *files, "redis,tls_enabled=true")
    assert isinstance(cache, RedisCacheConfig)
    assert cache.tls == RedisTls(cert="c.pem", key="k.pem", cacert="ca.pem", sni="cache")


def test_redis_login_from_tritons_variables_under_the_flags() -> None:
    env = {"TRITONCACHE_REDIS_USERNAME": "env-user", "TRITONCACHE_REDIS_PASSWORD": "env-pw"}
    cache = parse("redis,host=h", "redis,port=1", env=env)
    assert isinstance(cache, RedisCacheConfig)
    assert (cache.user, cache.password) == ("env-user", "env-pw")
    cache = parse("redis,host=h", "redis,port=1", "redis,user=flag-user", env=env)
    assert isinstance(cache, RedisCacheConfig)
    assert (cache.user, cache.password) == ("flag-user", "env-pw")


@pytest.mark.parametrize(
    ("items", "byte_size", "message"),
    [
        (("redis,host=h",), 0, "Must at a minimum specify 'host' and 'port'"),
        (("redis,port=6379",), 0, "Must at a minimum specify 'host' and 'port'"),
        (("redis,host=h", "redis,port=http"), 0, "port must be a whole number"),
        (("redis,host=h", "redis,port=1", "redis,pool_size=0"), 0, "the pool needs a connection"),
        (("redis,host=h", "redis,port=1", "redis,username=u"), 0, "no setting username"),
        (("local,size=1", "other,host=h"), 0, "only a single cache is currently supported"),
        (("local,size=1",), 8, "Incompatible flags --response-cache-byte-size and --cache-config"),
        (("memcached,host=h",), 0, "there is no cache 'memcached'"),
        (("local",), 0, "No cache specified"),
        (("local,size",), 0, "option format is '<cache name>,<setting>=<value>'"),
        (("local,size=-1",), 0, "size must be a number of bytes"),
        (("local,other=1",), 0, "takes only 'size'"),
    ],
)
def test_refusals(items: tuple[str, ...], byte_size: int, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parse(*items, byte_size=byte_size)
    assert message in str(error.value)


def test_the_missing_address_message_is_tritons() -> None:
    assert NO_ADDRESS.startswith(
        "Failed to initialize RedisCache, didn't specify address. Must at a minimum specify "
        "'host' and 'port' in the configuration"
    )
