"""What the mock answers to one request: output size, stop cause and usage details, and ids.

The natural reply length is `x-mock-output-tokens` or the server's `default_output_tokens`;
the request's own limit (`max_tokens`, `max_completion_tokens`, `max_output_tokens`) caps it,
and a reply so capped is "cut" (finish_reason "length", stop_reason "max_tokens", status
"incomplete"). Usage details come from headers:

- `x-mock-cached-tokens`: prompt tokens read from cache;
- `x-mock-cache-write-tokens`: prompt tokens written to cache, of which
  `x-mock-cache-write-1h-tokens` with a 1-hour lifetime (the rest 5 minutes);
- `x-mock-reasoning-tokens`: reasoning tokens, added to the visible output tokens;
- `x-mock-prompt-tokens`: the prompt's size to report instead of its counted tokens (to reach a
  long-context price tier without sending that much text).

Cache reads and writes are part of the prompt, so a prompt whose counted (or stated) tokens are
fewer than reads + writes is reported as reads + writes tokens long.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meterline.mock_provider.errors import INVALID_REQUEST, ApiError, header_int

MAX_OUTPUT_TOKENS = 100_000  # keeps a typo in a header from exhausting the server's memory

_PROCESS_TAG = secrets.token_hex(4)
_id_counter = itertools.count(1)


def new_id(prefix: str) -> str:
    """A unique id such as `chatcmpl-1a2b3c4d00000000002a`: a process tag and a counter."""
    return f"{prefix}{_PROCESS_TAG}{next(_id_counter):012x}"


@dataclass(frozen=True, slots=True)
class Reply:
    output_tokens: int
    cut: bool
    cached_tokens: int
    cache_write_tokens: int
    cache_write_1h_tokens: int
    reasoning_tokens: int
    prompt_tokens: int | None = None
    """The prompt size `x-mock-prompt-tokens` states; None: count the prompt."""

    def prompt_total(self, counted_tokens: int) -> int:
        """Prompt tokens to report: the counted (or stated) tokens, at least the cache reads plus writes."""
        size = counted_tokens if self.prompt_tokens is None else self.prompt_tokens
        return max(size, self.cached_tokens + self.cache_write_tokens)


def plan_reply(
    headers: Mapping[str, str], body: Mapping[str, Any], default_output_tokens: int, limit_fields: tuple[str, ...]
) -> Reply:
    """Plan the reply from the headers and the first of `limit_fields` the body sets."""
    natural = header_int(headers, "x-mock-output-tokens")
    if natural is None:
        natural = default_output_tokens
    elif natural > MAX_OUTPUT_TOKENS:
        raise ApiError(INVALID_REQUEST, f"header x-mock-output-tokens must be at most {MAX_OUTPUT_TOKENS}")
    limit = _limit(body, limit_fields)
    cache_write_1h = header_int(headers, "x-mock-cache-write-1h-tokens") or 0
    return Reply(
        output_tokens=natural if limit is None else min(natural, limit),
        cut=limit is not None and limit < natural,
        cached_tokens=header_int(headers, "x-mock-cached-tokens") or 0,
        cache_write_tokens=max(header_int(headers, "x-mock-cache-write-tokens") or 0, cache_write_1h),
        cache_write_1h_tokens=cache_write_1h,
        reasoning_tokens=header_int(headers, "x-mock-reasoning-tokens") or 0,
        prompt_tokens=header_int(headers, "x-mock-prompt-tokens"),
    )


def _limit(body: Mapping[str, Any], fields: tuple[str, ...]) -> int | None:
    for field in fields:
        value = body.get(field)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ApiError(INVALID_REQUEST, f"{field} must be a non-negative integer, got {value!r}", param=field)
        return value
    return None
