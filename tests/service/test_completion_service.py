"""The completion service's guards that need no model: what it refuses to run."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from refact_lsp.service.completion import CompletionService, ServiceError


class _Events:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _NoModel:
    """A runner that must not be asked to generate (the guards stop before the model)."""

    n_ctx = 4096
    state = "ready"

    def __init__(self, encode):
        self.tokenizer = type("Tokenizer", (), {"encode_text": staticmethod(encode)})()

    def generate(self, *args: Any) -> Any:
        raise AssertionError("the model ran")


async def test_no_speculation_for_a_request_the_document_has_moved_past(encode) -> None:
    service = CompletionService(asyncio.get_running_loop(), _Events())
    service._runner, service._model_state = _NoModel(encode), "ready"
    uri = "file:///a.py"
    service.open(uri, "python", 1, "x = foo\ny = 2\n")
    request = service._resolve(uri, 0, 7)
    assert request is not None and request.version == 1
    service.change(uri, 2, [((0, 0, 1, 5), "")])  # both lines deleted after the request
    assert await service._speculate_after(request, 7, 7, "(1)", 256) is False
    assert service.stats.speculative_runs == 0
    service.close()


async def test_a_key_the_client_no_longer_sends_goes_back_to_the_servers_default() -> None:
    loop = asyncio.get_running_loop()
    service = CompletionService(loop, _Events(), base_settings={"model": "/models/cli"})
    service.configure({"temperature": 0.5}, reload=False, initial=True)  # initializationOptions
    service.configure({"model": "/models/mine", "maxNewTokens": 8, "temperature": 0.0}, reload=False)
    assert (service.settings.model, service.settings.maxNewTokens, service.settings.temperature) == (
        "/models/mine",
        8,
        0.0,
    )
    service.configure({"model": None}, reload=False)  # the whole section now: model cleared, the rest gone
    assert (service.settings.model, service.settings.maxNewTokens, service.settings.temperature) == (
        "/models/cli",
        50,
        0.5,
    )
    with pytest.raises(ServiceError):
        service.configure(["maxNewTokens"], reload=False)  # type: ignore[arg-type]  # no object: nothing
    assert service.settings.model == "/models/cli"
    service.close()


async def test_a_bad_value_is_left_out_and_the_rest_applies() -> None:
    """One typo must not throw away the section: with the model in it, the default model (a 3 GB download)
    would load instead of the user's."""
    service = CompletionService(asyncio.get_running_loop(), _Events())
    problems = service.configure(
        {"model": "/models/mine", "maxNewTokens": 5000, "temperature": 0.3}, reload=False, initial=True
    )
    assert [p.split(" is invalid")[0] for p in problems] == ["setting 'maxNewTokens' = 5000"]
    assert (service.settings.model, service.settings.maxNewTokens, service.settings.temperature) == (
        "/models/mine",
        50,
        0.3,
    )
    problems = service.configure({"maxNewTokens": 64, "contextTokens": 32, "topP": 0.5}, reload=False)
    assert len(problems) == 1 and "contextTokens" in problems[0]
    settings = service.settings
    assert (settings.maxNewTokens, settings.contextTokens, settings.topP, settings.model) == (
        50,
        4096,
        0.5,
        "/models/mine",
    )
    assert service.configure({"maxNewTokens": 64}, reload=False) == []
    service.configure({"model": "/models/other"}, reload=False)
    # a typo in a later section keeps the model in force, not the one the client started with
    assert len(service.configure({"model": "", "temperature": 0.1}, reload=False)) == 1
    assert (service.settings.model, service.settings.temperature) == ("/models/other", 0.1)
    service.close()


async def test_null_is_the_command_lines_value_and_a_missing_key_the_initialization_options() -> None:
    """VS Code sends its whole configuration as initializationOptions, then sections with model null
    once the user clears it: that is the command line's model, not the one the editor started with."""
    service = CompletionService(asyncio.get_running_loop(), _Events(), base_settings={"model": "/models/cli"})
    service.configure({"model": "/models/at-start", "temperature": 0.5}, reload=False, initial=True)
    service.configure({"model": None, "temperature": 0.0}, reload=False)
    assert (service.settings.model, service.settings.temperature) == ("/models/cli", 0.0)
    service.configure({}, reload=False)  # nothing set: what the client started with
    assert (service.settings.model, service.settings.temperature) == ("/models/at-start", 0.5)
    service.close()
