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
    `require_key`, when set, must arrive as `Authorization: Bearer KEY`, `x-api-key: KEY`,
    `api-key: KEY`, `x-goog-api-key: KEY` or `?key=KEY`. `batch_delay_s` is how long a batch
    runs before it completes (`x-mock-batch-delay-s` on the create request overrides it).
    """

    latency_ms: float = 0
    per_token_ms: float = 0
    default_output_tokens: int = 16
    fault: str | None = None
    fault_rate: float = 1.0
    require_key: str | None = None
    stream_chunk_tokens: int = 1
    batch_delay_s: float = 2.0

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
        if self.batch_delay_s < 0:
            raise ValueError("batch_delay_s must be >= 0")
