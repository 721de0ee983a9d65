"""The rate limiter: flag parsing, the config's `rate_limiter`, resource limits and grant order
(with plain tickets and threads; no timing)."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping

import pytest

from inferd.backends.base import Device
from inferd.batching.rate_limiter import (
    ExplicitResource,
    InstanceNeeds,
    RateLimiter,
    Ticket,
    deregister_all,
)
from inferd.repository.config import (
    RateLimiterConfig,
    RateLimiterResource,
    normalize,
    parse_config_text,
    to_model_config,
    validate,
)
from inferd.repository.rate_limits import instance_needs
from inferd.server.errors import ErrorCode, InferdError
from inferd.server.rate_limit_settings import (
    RateLimitMode,
    RateLimitSettings,
    parse_rate_limit,
    parse_resource,
)

# ---- flags -----------------------------------------------------------------------------------


def test_rate_limit_flags_parse_case_insensitive_modes_and_resources() -> None:
    assert parse_rate_limit("off", []) == RateLimitSettings()
    assert not RateLimitSettings().enabled
    settings = parse_rate_limit("EXECUTION_COUNT", ["R1:4", "R2:5:0", "R2:8:1", "r3:2:-1"])
    assert settings.enabled and settings.mode is RateLimitMode.EXECUTION_COUNT
    assert settings.resources == (
        ExplicitResource("R1", 4),
        ExplicitResource("R2", 5, 0),
        ExplicitResource("R2", 8, 1),
        ExplicitResource("r3", 2),  # names keep their case; -1 = every device
    )


@pytest.mark.parametrize(
    ("item", "says"),
    [
        (
            "R1",
            "--rate-limit-resource option format is '<resource_name>:<count>:<device>' or "
            "'<resource_name>:<count>'. Got R1",
        ),
        ("R1:2:0:1", "option format is"),
        ("R1:x", "Invalid option value. Got x"),
        ("R1:", "Invalid option value. Got "),
        ("R1:2:gpu0", "Invalid option value. Got gpu0"),
        ("R1:99999999999", "Provided option value is out of bound. Got 99999999999"),
        ("R1:-3", "the count must be >= 0"),
        (":2", "the resource name is empty"),
        ("R1:2:-2", "the device must be a device id >= 0"),
    ],
)
def test_bad_rate_limit_resources_say_why(item: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_resource(item)


def test_bad_rate_limit_mode_uses_tritons_words() -> None:
    with pytest.raises(ValueError, match="invalid argument for --rate-limit: 'bogus'"):
        parse_rate_limit("bogus", [])


# ---- config.pbtxt ----------------------------------------------------------------------------

CONFIG = """
name: "m"
platform: "onnxruntime_onnx"
input [{ name: "X" data_type: TYPE_FP32 dims: [ 1 ] }]
output [{ name: "Y" data_type: TYPE_FP32 dims: [ 1 ] }]
instance_group [
  {
    count: 2
    kind: KIND_CPU
    rate_limiter {
      resources [ { name: "R1" count: 4 }, { name: "R2" global: true count: 2 } ]
      priority: 2
    }
  },
  { kind: KIND_GPU gpus: [ 0, 1 ] rate_limiter { resources [ { name: "R1" count: 1 } ] } },
  { kind: KIND_CPU }
]
"""


def typed(text: str, gpus: int = 2):  # type: ignore[no-untyped-def]
    proto = parse_config_text(text, "config.pbtxt")
    normalize(proto, "m", gpus)
    validate(proto, "m", "config.pbtxt")
    return to_model_config(proto, "onnxruntime")


def test_instance_groups_carry_their_rate_limiter() -> None:
    groups = typed(CONFIG).instance_groups
    assert groups[0].rate_limiter == RateLimiterConfig(
        (RateLimiterResource("R1", 4), RateLimiterResource("R2", 2, is_global=True)), 2
    )
    assert groups[1].rate_limiter == RateLimiterConfig((RateLimiterResource("R1", 1),))
    assert groups[2].rate_limiter == RateLimiterConfig()


@pytest.mark.parametrize(
    ("resources", "says"),
    [
        ('{ name: "" count: 1 }', "rate_limiter: a resource has no name"),
        ('{ name: "R" count: 1 }, { name: "R" count: 2 }', "resource 'R' is listed twice"),
    ],
)
def test_bad_rate_limiter_configs_are_load_errors(resources: str, says: str) -> None:
    text = CONFIG.replace('{ name: "R1" count: 1 }', resources)
    with pytest.raises(InferdError) as info:
        typed(text)
    assert info.value.code is ErrorCode.INVALID_ARG
    assert says in info.value.message and "instance_group 'm_1'" in info.value.message


def test_instance_needs_follow_the_loaders_devices() -> None:
    config = typed(CONFIG)
    cpu, gpu0, gpu1 = Device("cpu"), Device("gpu", 0), Device("gpu", 1)
    needs = instance_needs(config, [cpu, cpu, gpu0, gpu1, cpu])
    assert [(n.device, dict(n.resources), n.priority) for n in needs] == [
        (0, {"R1": (4, False), "R2": (2, True)}, 2),
        (0, {"R1": (4, False), "R2": (2, True)}, 2),
        (0, {"R1": (1, False)}, 0),  # CPU instances count as device 0, as in Triton
        (1, {"R1": (1, False)}, 0),
        (0, {}, 0),
    ]
    # The KIND_GPU group fallen back to the CPU: one instance per group count.
    fallen = instance_needs(config, [cpu, cpu, cpu, cpu])
    assert [n.device for n in fallen] == [0, 0, 0, 0]
    assert dict(fallen[2].resources) == {"R1": (1, False)}


# ---- limits ----------------------------------------------------------------------------------


def needs(
    name: str, resources: Mapping[str, int], device: int = 0, priority: int = 0, glob: bool = False
) -> InstanceNeeds:
    return InstanceNeeds(name, device, {r: (c, glob) for r, c in resources.items()}, priority)


def test_default_limits_are_the_largest_need_per_device() -> None:
    limiter = RateLimiter()
    # Triton's documented example:
    # A [R1: 4, R2: 4], B [R2: 5, R3: 10, R4: 5], C [R1: 1, R3: 7, R4: 2]
    limiter.register([needs("A", {"R1": 4, "R2": 4})])
    limiter.register([needs("B", {"R2": 5, "R3": 10, "R4": 5})])
    c = limiter.register([needs("C", {"R1": 1, "R3": 7, "R4": 2})])
    assert limiter.limits() == {(0, "R1"): 4, (0, "R2"): 5, (0, "R3"): 10, (0, "R4"): 5}
    limiter.register([needs("D", {"R1": 2}, device=1), needs("G", {"R5": 3}, glob=True)])
    assert limiter.limits()[(1, "R1")] == 2 and limiter.limits()[(None, "R5")] == 3
    deregister_all(c)  # an unloaded instance's needs no longer count
    assert limiter.limits()[(0, "R3")] == 10 and limiter.limits()[(0, "R4")] == 5


def test_explicit_counts_replace_the_defaults_per_device_and_globally() -> None:
    # Triton's documented example: R1:10, R2:5:0, R2:8:1, R3:2 (R3 global in a config).
    limiter = RateLimiter(
        [
            ExplicitResource("R1", 10),
            ExplicitResource("R2", 5, 0),
            ExplicitResource("R2", 8, 1),
            ExplicitResource("R3", 2),
        ]
    )
    limiter.register(
        [
            needs("a", {"R1": 1, "R2": 1}, device=0),
            needs("b", {"R1": 1, "R2": 1}, device=1),
            needs("c", {"R3": 1}, glob=True),
        ]
    )
    assert limiter.limits() == {
        (0, "R1"): 10,
        (0, "R2"): 5,
        (1, "R1"): 10,
        (1, "R2"): 8,
        (None, "R3"): 2,
    }


def test_a_resource_given_twice_for_a_device_keeps_the_smaller_count() -> None:
    limiter = RateLimiter([ExplicitResource("R", 3), ExplicitResource("R", 2)])
    limiter.register([needs("a", {"R": 1})])
    assert limiter.limits() == {(0, "R"): 2}


@pytest.mark.parametrize(
    ("explicit", "instance", "says"),
    [
        (
            [ExplicitResource("R1", 2)],
            needs("big", {"R1": 4}),
            'Resource count for "R1" is limited to 2 which will prevent scheduling of one or '
            "more model instances, the minimum required count is 4",
        ),
        (  # once any count is explicit, an unnamed resource has none
            [ExplicitResource("R1", 2)],
            needs("other", {"R2": 1}),
            'Resource count for "R2" is limited to 0',
        ),
        (  # a count for another device does not help
            [ExplicitResource("R1", 4, 1)],
            needs("on0", {"R1": 1}),
            'Resource count for "R1" is limited to 0',
        ),
    ],
)
def test_instances_needing_more_than_available_fail_to_register(
    explicit: list[ExplicitResource], instance: InstanceNeeds, says: str
) -> None:
    limiter = RateLimiter(explicit)
    kept = limiter.register([needs("fits", {"R1": 1})]) if instance.name != "on0" else []
    before = limiter.limits()
    with pytest.raises(InferdError) as info:
        limiter.register([needs("fine", {}), instance])
    assert info.value.code is ErrorCode.INVALID_ARG and says in info.value.message
    assert limiter.limits() == before  # all or nothing
    assert all(t.registered for t in kept)


def test_a_resource_cannot_be_both_global_and_per_device() -> None:
    limiter = RateLimiter()
    limiter.register([needs("g", {"R1": 1}, glob=True)])
    with pytest.raises(InferdError) as info:
        limiter.register([needs("d", {"R1": 1})])
    assert info.value.message == (
        'Resource "R1" is present as both global and device-specific resource in the model '
        "configuration."
    )


# ---- grant order -----------------------------------------------------------------------------


def granted(*tickets: Ticket) -> list[bool]:
    return [t.granted.is_set() for t in tickets]


def test_an_instance_waits_until_the_resources_it_needs_are_released() -> None:
    limiter = RateLimiter()
    a, free, b = limiter.register([needs("a", {"R": 1}), needs("f", {}), needs("b", {"R": 1})])
    limiter.request(a)
    limiter.request(free)  # needs nothing
    limiter.request(b)
    assert granted(a, free, b) == [True, True, False]
    limiter.release(a)
    assert granted(b) == [True]
    limiter.release(b)
    limiter.release(free)
    with pytest.raises(RuntimeError, match="holds nothing"):
        limiter.release(b)


def test_per_device_resources_are_counted_per_device() -> None:
    limiter = RateLimiter()
    on0, on1, also0 = limiter.register(
        [needs("on0", {"R": 1}), needs("on1", {"R": 1}, device=1), needs("also0", {"R": 1})]
    )
    for ticket in (on0, on1, also0):
        limiter.request(ticket)
    assert granted(on0, on1, also0) == [True, True, False]
    limiter.release(on0)
    assert granted(also0) == [True]


def test_global_resources_exist_once_for_all_devices() -> None:
    limiter = RateLimiter()
    g0, g1 = limiter.register(
        [needs("g0", {"G": 1}, glob=True), needs("g1", {"G": 1}, device=1, glob=True)]
    )
    limiter.request(g0)
    limiter.request(g1)
    assert granted(g0, g1) == [True, False]
    limiter.release(g0)
    assert granted(g1) == [True]


def test_waiting_instances_go_by_executions_times_priority() -> None:
    limiter = RateLimiter()
    holder, a, b = limiter.register(
        [needs("h", {"R": 1}), needs("a", {"R": 1}, priority=1), needs("b", {"R": 1}, priority=2)]
    )
    for ticket, runs in ((a, 3), (b, 1)):  # a: 3 x 1 = 3 before b: 1 x 2 = 2
        for _ in range(runs):
            limiter.request(ticket)
            limiter.release(ticket)
    limiter.request(holder)
    limiter.request(a)
    limiter.request(b)  # later, but with the smaller score
    limiter.release(holder)
    assert granted(a, b) == [False, True]
    limiter.release(b)  # now b: 2 x 2 = 4 > a: 3
    assert granted(a) == [True]


def test_equal_scores_go_in_arrival_order_and_priority_0_counts_as_1() -> None:
    limiter = RateLimiter()
    holder, a, b = limiter.register(
        [needs("h", {"R": 1}), needs("a", {"R": 1}, priority=0), needs("b", {"R": 1}, priority=1)]
    )
    for ticket in (a, b):
        limiter.request(ticket)
        limiter.release(ticket)
    limiter.request(holder)
    limiter.request(b)
    limiter.request(a)
    limiter.release(holder)
    assert granted(b, a) == [True, False]


def test_a_priority_n_instance_runs_1_in_n_times_as_often() -> None:
    """Three instances with more work all the time, sharing one resource: each asks again as
    it releases (requeue), as a worker handed its next batch does."""
    limiter = RateLimiter()
    tickets = limiter.register(
        [
            needs("p1", {"R": 1}, priority=1),
            needs("p2", {"R": 1}, priority=2),
            needs("p4", {"R": 1}, priority=4),
        ]
    )
    for ticket in tickets:
        limiter.request(ticket)
    runs = {t.name: 0 for t in tickets}
    for _ in range(70):
        (running,) = [t for t in tickets if t.holding]
        runs[running.name] += 1
        limiter.requeue(running)
    assert runs == {"p1": 40, "p2": 20, "p4": 10}


def test_an_instance_that_does_not_fit_holds_back_those_behind_it() -> None:
    """As in Triton, the first waiting instance is served first even when a later one would
    fit now: large needs are not starved by a stream of small ones."""
    limiter = RateLimiter()
    small1, big, small2 = limiter.register(
        [needs("s1", {"R": 1}), needs("big", {"R": 2}), needs("s2", {"R": 1})]
    )
    limiter.request(small1)
    limiter.request(big)
    limiter.request(small2)
    assert granted(small1, big, small2) == [True, False, False]
    limiter.release(small1)
    assert granted(big, small2) == [True, False]
    limiter.release(big)
    assert granted(small2) == [True]


def test_registering_more_resources_wakes_waiting_instances() -> None:
    limiter = RateLimiter()
    a, b = limiter.register([needs("a", {"R": 1}), needs("b", {"R": 1})])
    limiter.request(a)
    limiter.request(b)
    assert granted(b) == [False]
    limiter.register([needs("c", {"R": 2})])  # the default limit grows to 2
    assert granted(b) == [True]


def test_acquire_blocks_the_instance_thread_until_release() -> None:
    limiter = RateLimiter()
    a, b = limiter.register([needs("a", {"R": 1}), needs("b", {"R": 1})])
    limiter.acquire(a)  # free: returns at once
    order: list[str] = []
    b_asked = threading.Event()

    def run_b() -> None:
        b_asked.set()
        limiter.acquire(b)
        order.append("b runs")
        limiter.release(b)

    thread = threading.Thread(target=run_b)
    thread.start()
    assert b_asked.wait(10)
    order.append("a releases")
    limiter.release(a)
    thread.join(10)
    assert not thread.is_alive()
    assert order == ["a releases", "b runs"]
