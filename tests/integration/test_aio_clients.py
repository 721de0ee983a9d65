"""tritonclient's asyncio clients (`tritonclient.http.aio`, `tritonclient.grpc.aio`), as async
services use them. The aio HTTP client runs on aiohttp, which asks for gzip on every request
and reads error bodies as they come."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc.aio as grpc_aio
import tritonclient.http.aio as http_aio
from tritonclient.utils import InferenceServerException

from tests.conftest import RunningServer

A = np.arange(16, dtype=np.int32).reshape(1, 16)
B = np.full((1, 16), -1, dtype=np.int32)


def _inputs(module: Any) -> list[Any]:
    """INPUT0 and INPUT1 of the `simple` model, in the client module's InferInput."""
    inputs = [module.InferInput(name, [1, 16], "INT32") for name in ("INPUT0", "INPUT1")]
    inputs[0].set_data_from_numpy(A)
    inputs[1].set_data_from_numpy(B)
    return inputs


async def test_http_aio_client(examples_server: RunningServer) -> None:
    client = http_aio.InferenceServerClient(examples_server.http_url)
    try:
        assert await client.is_server_ready()
        assert (await client.get_model_metadata("simple"))["name"] == "simple"
        answers = await asyncio.gather(
            *(client.infer("simple", _inputs(http_aio)) for _ in range(2))
        )
        for answer in answers:
            np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), A + B)
            np.testing.assert_array_equal(answer.as_numpy("OUTPUT1"), A - B)
        # Error answers come uncompressed, so the client can read them.
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("wrong_model_name", _inputs(http_aio))
        assert caught.value.message().startswith("Request for unknown model")
        bad = http_aio.InferInput("INPUT0", [1, 15], "INT32")
        bad.set_data_from_numpy(np.zeros((1, 15), np.int32))
        with pytest.raises(InferenceServerException) as caught:
            await client.infer("simple", [bad])
        assert caught.value.status() == "400"
    finally:
        await client.close()


async def test_grpc_aio_client(examples_server: RunningServer) -> None:
    client = grpc_aio.InferenceServerClient(examples_server.grpc_url)
    try:
        assert await client.is_server_live()
        assert (await client.get_model_metadata("simple")).name == "simple"
        answers = await asyncio.gather(
            *(client.infer("simple", _inputs(grpc_aio)) for _ in range(2))
        )
        for answer in answers:
            np.testing.assert_array_equal(answer.as_numpy("OUTPUT0"), A + B)
        with pytest.raises(InferenceServerException) as caught:
            await client.get_model_metadata("wrong_model_name")
        assert "Request for unknown model" in caught.value.message()
    finally:
        await client.close()
