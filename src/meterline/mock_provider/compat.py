"""How OpenAI-compatible servers differ from OpenAI in usage, emulated per request with `x-mock-compat: <server>`.

The header (or a gateway provider's `headers:` setting it for every call) makes the OpenAI
chat and completion routes answer as that server does, per its documentation:

- `vllm`: `usage` without details (`prompt_tokens_details: null`); stream usage only when asked
  for with `stream_options.include_usage`, as OpenAI does;
- `deepseek`: cache reads as `prompt_cache_hit_tokens` and `prompt_cache_miss_tokens` instead of
  `prompt_tokens_details`; streams as OpenAI;
- `groq`: timing fields in `usage`; a stream's last chunk carries `x_groq: {id, usage}`, and no
  usage chunk follows;
- `together`: plain `usage`; a stream's last chunk carries `usage` whether asked for or not;
- `mistral`: as together, and a request with `stream_options` is refused with 422 (extra inputs
  are not permitted);
- `openrouter`: `prompt_tokens_details` with `cache_write_tokens`, and `cost` (one micro-dollar
  per token, in credits = USD); a stream starts with the `: OPENROUTER PROCESSING` comment and
  always ends with a usage chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meterline.mock_provider.errors import INVALID_REQUEST, UNPROCESSABLE, ApiError
from meterline.mock_provider.reply import Reply

HEADER = "x-mock-compat"
SERVERS = ("vllm", "deepseek", "groq", "together", "mistral", "openrouter")

USAGE_CHUNK = "chunk"
"""Usage arrives in a chunk of its own with `choices: []`."""
USAGE_ON_LAST = "last"
"""Usage arrives on the stream's last chunk, beside its choices."""
USAGE_X_GROQ = "x_groq"
"""Usage arrives on the last chunk under `x_groq.usage`."""

OPENROUTER_COMMENT = b": OPENROUTER PROCESSING\n\n"


def server_of(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    """The server to emulate (None: OpenAI itself); refuses what that server refuses."""
    server = headers.get(HEADER)
    if server is None:
        return None
    if server not in SERVERS:
        raise ApiError(INVALID_REQUEST, f"header {HEADER} must be one of {', '.join(SERVERS)}, got {server!r}")
    if server == "mistral" and "stream_options" in body:
        raise ApiError(UNPROCESSABLE, "Extra inputs are not permitted: body.stream_options", param="stream_options")
    return server


def shaped_usage(server: str | None, usage: dict[str, Any], reply: Reply) -> dict[str, Any]:
    """OpenAI's `usage` object for `reply` as `server` reports it."""
    if server is None:
        return usage
    prompt, completion = usage["prompt_tokens"], usage["completion_tokens"]
    plain = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": usage["total_tokens"]}
    cached, reasoning = reply.cached_tokens, reply.reasoning_tokens
    if server == "vllm":
        return {**plain, "prompt_tokens_details": None}
    if server == "deepseek":
        return {
            **plain,
            "prompt_cache_hit_tokens": cached,
            "prompt_cache_miss_tokens": prompt - cached,
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    if server == "groq":
        return {**plain, "queue_time": 0.01, "prompt_time": 0.002, "completion_time": 0.02, "total_time": 0.022}
    if server == "openrouter":
        return {
            **plain,
            "cost": (prompt + completion) / 1_000_000,
            "is_byok": False,
            "prompt_tokens_details": {"cached_tokens": cached, "cache_write_tokens": reply.cache_write_tokens},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    return plain


def stream_usage(server: str | None, include_usage: bool) -> str | None:
    """Where a stream carries its usage (`USAGE_*`), or None when it does not."""
    if server in ("together", "mistral"):
        return USAGE_ON_LAST
    if server == "groq":
        return USAGE_X_GROQ
    if server == "openrouter" or include_usage:
        return USAGE_CHUNK
    return None
