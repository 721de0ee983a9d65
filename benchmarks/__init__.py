"""Load-test harness and benchmarks, installed as ``inferd.benchmarks``.

Their dependencies come with ``inferd[cpu,bench]``.
"""
