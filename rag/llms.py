"""The language model: OpenAI, or any OpenAI-compatible server, or none (retrieval-only mode).

Built on the runtime loop, so its async HTTP client lives on the loop that uses it. Provider
exceptions become ModelError in `map_provider_errors`, never leaking keys into messages.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rag.config import Settings, redact_url
from rag.errors import ModelError, RagError


def build_llm(settings: Settings, temperature: float | None = None) -> Any | None:
    """The configured LLM, or None when neither OPENAI_API_KEY nor OPENAI_BASE_URL is set."""
    if not settings.llm_enabled:
        return None
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    temp = settings.temperature if temperature is None else temperature
    if settings.openai_base_url:
        from llama_index.llms.openai_like import OpenAILike

        return OpenAILike(
            model=settings.llm_model,
            api_base=settings.openai_base_url,
            api_key=key or "not-needed",
            is_chat_model=True,
            context_window=8192,
            temperature=temp,
            timeout=settings.llm_timeout,
            max_retries=2,
        )
    from llama_index.llms.openai import OpenAI

    return OpenAI(model=settings.llm_model, api_key=key, temperature=temp, timeout=settings.llm_timeout, max_retries=2)


def describe_llm(settings: Settings) -> str:
    """A one-line description for status displays; never includes the key or a password in the URL."""
    if not settings.llm_enabled:
        return "none (retrieval-only mode)"
    where = redact_url(settings.openai_base_url) if settings.openai_base_url else "OpenAI"
    return f"{settings.llm_model} via {where}"


@contextlib.contextmanager
def map_provider_errors() -> Iterator[None]:
    """Translate OpenAI client failures into ModelError with a message people can act on."""
    import openai

    try:
        yield
    except RagError:
        raise
    except openai.AuthenticationError as exc:
        raise ModelError(str(exc), user_message="The LLM refused the API key (OPENAI_API_KEY).") from exc
    except openai.NotFoundError as exc:
        raise ModelError(str(exc), user_message="The LLM server does not know that model (LLM_MODEL).") from exc
    except openai.RateLimitError as exc:
        raise ModelError(str(exc), user_message="The LLM provider is rate limiting; try again shortly.") from exc
    except openai.APIConnectionError as exc:
        raise ModelError(str(exc), user_message="The LLM server is unreachable (OPENAI_BASE_URL).") from exc
    except openai.APIError as exc:
        raise ModelError(str(exc), user_message=f"The LLM failed: {getattr(exc, 'message', exc)}") from exc
