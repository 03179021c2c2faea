"""Server-wide settings of the mock provider (the `meterline mock-provider` options)."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.mock_provider.faults import FAULT_NAMES
from meterline.mock_provider.reply import MAX_OUTPUT_TOKENS


@dataclass(frozen=True)
class MockSettings:
    """How the mock answers when a request's `x-mock-*` headers say nothing else.

    `fault` is injected on a deterministic `fault_rate` fraction of API requests (request i is
    faulted when floor(i * rate) > floor((i - 1) * rate), so 0.5 faults every second request).
    `require_key`, when set, must arrive as `Authorization: Bearer KEY` or `x-api-key: KEY`.
    """

    latency_ms: float = 0
    per_token_ms: float = 0
    default_output_tokens: int = 16
    fault: str | None = None
    fault_rate: float = 1.0
    require_key: str | None = None
    stream_chunk_tokens: int = 1

    def __post_init__(self) -> None:
        if self.latency_ms < 0 or self.per_token_ms < 0:
            raise ValueError("latency_ms and per_token_ms must be >= 0")
        if not 0 <= self.default_output_tokens <= MAX_OUTPUT_TOKENS:
            raise ValueError(f"default_output_tokens must be between 0 and {MAX_OUTPUT_TOKENS}")
        if self.fault is not None and self.fault not in FAULT_NAMES:
            raise ValueError(f"unknown fault {self.fault!r}; known faults: {', '.join(FAULT_NAMES)}")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError("fault_rate must be between 0 and 1")
        if self.stream_chunk_tokens < 1:
            raise ValueError("stream_chunk_tokens must be >= 1")
