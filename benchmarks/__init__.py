"""Load-test harness and benchmarks, installed as ``inferd.benchmarks`` by ``inferd[bench]``."""
