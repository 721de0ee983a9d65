"""Load-test harness and benchmarks, installed as ``inferd.benchmarks``; their dependencies come with ``inferd[cpu,bench]``."""
