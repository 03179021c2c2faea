"""Token estimates for calls whose provider reported no usage (cut-off streams, bare servers).

tiktoken's `o200k_base` encoding is used when it can be loaded without the network (it is in
tiktoken's cache, e.g. `TIKTOKEN_CACHE_DIR`); otherwise a documented heuristic: one token per
four characters, rounded up, at least one token for non-empty text. Events record which path
produced the numbers in `usage_estimator` ("tiktoken:o200k_base" or "heuristic:chars/4").
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from functools import cache

HEURISTIC = "heuristic:chars/4"


@cache
def _encoder() -> tuple[str, Callable[[str], int]]:
    """Load tiktoken's encoding once; fall back to the heuristic when it is missing or offline."""
    if os.environ.get("MLINE_TOKENIZER", "auto") != "heuristic":
        try:
            import tiktoken

            encoding = tiktoken.get_encoding("o200k_base")
        except Exception:  # not installed, or its encoding file cannot be fetched offline
            pass
        else:
            return "tiktoken:o200k_base", lambda text: len(encoding.encode(text, disallowed_special=()))
    return HEURISTIC, lambda text: math.ceil(len(text) / 4)


def estimator_name() -> str:
    return _encoder()[0]


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    return _encoder()[1](text)
