"""The fallback's pure parts: which models fall back, what goes to the provider, and that
LiteLLM is only ever imported by a gateway that has a fallback."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import pytest

from gateway.api import fallback
from gateway.api.fallback import Fallback, provider_arguments
from gateway.settings import FallbackSettings

SELF_HOSTED = FallbackSettings(
    model="openai/tiny-moe", api_base="http://provider:8000/v1", api_key="sk-provider"
)
CHAT = {
    "model": "local-model",
    "messages": [{"role": "user", "content": "hi"}],
    "max_tokens": 8,
    "temperature": 0.2,
    "stop": ["\n"],
    "n": 2,
    "seed": 7,
    "stream": True,
    "stream_options": {"include_usage": True},
    # LocalMoE's cache opt-out, two engine extras, and a field the gateway ignores.
    "cache": False,
    "ignore_eos": True,
    "top_k": 5,
    "min_tokens": None,
    "vendor_thing": 1,
}


def test_an_empty_models_list_covers_every_model() -> None:
    assert Fallback(SELF_HOSTED, litellm=None).covers("anything")


def test_only_the_listed_models_fall_back() -> None:
    settings = SELF_HOSTED.model_copy(update={"models": ["a", "b"]})
    covered = Fallback(settings, litellm=None)
    assert covered.covers("a") and covered.covers("b") and not covered.covers("c")


def test_openai_parameters_go_as_sent_with_the_providers_model_and_key() -> None:
    arguments = provider_arguments(CHAT, chat=True, settings=SELF_HOSTED)
    for name in ("messages", "max_tokens", "temperature", "stop", "n", "seed", "stream"):
        assert arguments[name] == CHAT[name], name
    assert arguments["stream_options"] == {"include_usage": True}
    assert arguments["model"] == "openai/tiny-moe"
    assert arguments["api_base"] == "http://provider:8000/v1"
    assert arguments["api_key"] == "sk-provider"
    assert arguments["timeout"] == SELF_HOSTED.timeout_s


def test_local_only_and_unknown_fields_are_dropped() -> None:
    arguments = provider_arguments(CHAT, chat=True, settings=SELF_HOSTED)
    assert "cache" not in arguments and "vendor_thing" not in arguments


def test_engine_extras_go_in_extra_body_to_a_self_hosted_server() -> None:
    arguments = provider_arguments(CHAT, chat=True, settings=SELF_HOSTED)
    assert arguments["extra_body"] == {"ignore_eos": True, "top_k": 5}
    assert "top_k" not in arguments and "ignore_eos" not in arguments


@pytest.mark.parametrize(
    "settings",
    [
        FallbackSettings(model="openai/gpt-4o-mini"),  # OpenAI itself: no api_base
        FallbackSettings(model="anthropic/claude-3-5-haiku", api_base="http://x/v1"),
    ],
)
def test_engine_extras_are_dropped_for_a_hosted_provider(settings: FallbackSettings) -> None:
    arguments = provider_arguments(CHAT, chat=True, settings=settings)
    assert "extra_body" not in arguments and "top_k" not in arguments
    assert "api_base" not in arguments or settings.api_base


def test_a_stream_always_asks_for_its_usage() -> None:
    body = {"model": "m", "prompt": "Once", "stream": True}
    arguments = provider_arguments(body, chat=False, settings=SELF_HOSTED)
    assert arguments["stream_options"] == {"include_usage": True}
    assert "stream_options" not in provider_arguments(
        {"model": "m", "prompt": "Once"}, chat=False, settings=SELF_HOSTED
    )


def test_a_completion_keeps_its_prompt_and_completion_parameters() -> None:
    body: dict[str, Any] = {"model": "m", "prompt": "Once", "echo": True, "max_tokens": 3}
    arguments = provider_arguments(body, chat=False, settings=SELF_HOSTED)
    assert (arguments["prompt"], arguments["echo"], arguments["max_tokens"]) == ("Once", True, 3)
    assert "messages" not in arguments


def test_no_fallback_model_builds_no_fallback() -> None:
    assert fallback.build(FallbackSettings()) is None


def test_a_fallback_without_litellm_installed_fails_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "litellm", None)  # `import litellm` raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'localmoe\[fallback\]'"):
        fallback.build(FallbackSettings(model="openai/gpt-4o-mini"))


def test_a_gateway_without_a_fallback_never_imports_litellm() -> None:
    # A fresh interpreter: this one may have imported LiteLLM for other tests.
    script = textwrap.dedent(
        """
        import sys
        from starlette.testclient import TestClient
        from gateway.api.app import create_app
        from gateway.settings import AuthSettings, Settings

        auth = AuthSettings(jwt_secret="s" * 40)
        settings = Settings(auth=auth, triton={"urls": ["127.0.0.1:9"]})
        with TestClient(create_app(settings)) as client:  # runs the lifespan
            assert client.get("/health/live").status_code == 200
            assert client.app.state.fallback is None
        print("litellm" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"
