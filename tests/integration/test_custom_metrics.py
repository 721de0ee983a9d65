"""Custom metrics of python models (pb_utils.MetricFamily) on the server's metrics endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_SETTINGS, RunningServer, start_server
from tests.python_models import write_python_model
from tests.waiting import wait_for
from tests.wire import PROTOCOLS, client_for, infer

# Two instances make the same families and metrics: one series each, as in Triton.
METERED = """
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        labels = {"model": args["model_name"]}
        calls = pb_utils.MetricFamily(
            name="metered_calls", description="execute() calls", kind=pb_utils.MetricFamily.COUNTER
        )
        self.calls = calls.Metric(labels=labels)
        gauge = pb_utils.MetricFamily.GAUGE
        size = pb_utils.MetricFamily("metered_last_size", "last batch size", gauge)
        self.size = size.Metric(labels=labels)
        values = pb_utils.MetricFamily(
            "metered_values", "input values", pb_utils.MetricFamily.HISTOGRAM
        )
        self.values = values.Metric(labels=labels, buckets=[1.0, 10.0])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "X").as_numpy()
            self.calls.increment(1)
            self.size.set(x.shape[0])
            for value in x.flat:
                self.values.observe(float(value))
            try:
                self.calls.increment(-1)
                refused = ""
            except pb_utils.TritonModelException as error:
                refused = error.message()
            out = np.array([[refused.encode()]] * x.shape[0], dtype=object)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("REFUSED", out)]))
        return responses
"""

METERED_CONFIG = """
backend: "python"
max_batch_size: 4
input [{ name: "X" data_type: TYPE_FP32 dims: [ 2 ] }]
output [{ name: "REFUSED" data_type: TYPE_STRING dims: [ 1 ] }]
instance_group [{ count: 2 kind: KIND_CPU }]
"""


@pytest.fixture(scope="module", params=["thread", "process"])
def server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("metrics")
    write_python_model(root, "metered", METERED, METERED_CONFIG)
    running = start_server(
        replace(
            TEST_SETTINGS,
            model_repositories=(root,),
            model_control_mode="explicit",
            load_models=("metered",),
            python_isolation=request.param,
        )
    )
    yield running
    running.stop()


def scrape(server: RunningServer) -> dict[tuple[str, str], float]:
    text = httpx.get(f"http://{server.http_url}/metrics").text
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("model") == "metered"
    }


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_models_export_their_own_metrics(server: RunningServer, protocol: str) -> None:
    before = scrape(server)
    outputs = infer(server, protocol, "metered", {"X": np.array([[0.5, 5.0]], np.float32)})
    assert b"incremented by >= 0" in outputs["REFUSED"][0, 0]  # misuse: the model's exception
    after = scrape(server)
    # (The parser names counter samples with a _total suffix that the text does not have.)
    calls = ("metered_calls_total", "")
    assert after[calls] == before.get(calls, 0) + 1
    assert after[("metered_last_size", "")] == 1
    assert (
        after[("metered_values_bucket", "1.0")]
        == before.get(("metered_values_bucket", "1.0"), 0) + 1
    )
    assert (
        after[("metered_values_bucket", "+Inf")]
        == before.get(("metered_values_bucket", "+Inf"), 0) + 2
    )
    assert after[("metered_values_count", "")] == before.get(("metered_values_count", ""), 0) + 2


def test_metrics_leave_with_the_model(server: RunningServer) -> None:
    with client_for(server, "http") as client:
        client.unload_model("metered")
        wait_for(lambda: scrape(server) == {})  # once its instances are freed
        client.load_model("metered")
    infer(server, "http", "metered", {"X": np.ones((1, 2), np.float32)})
    assert scrape(server)[("metered_calls_total", "")] == 1  # a new series from zero
