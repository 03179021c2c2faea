"""A cached answer: the bytes the client was sent, and what the call that produced them cost.

A JSON answer keeps its body. A stream keeps what was written to the client before and after
the gateway's own `: x-meterline-cost-usd=...` comment, so a replay sends the same bytes with
only the cost in that comment changed (a hit costs 0).
"""

from __future__ import annotations

import msgspec


class CachedAnswer(msgspec.Struct, kw_only=True, array_like=True):
    status: int
    content_type: str
    body: bytes = b""
    """The JSON body; for a stream, what was sent before the cost comment."""
    stream_tail: bytes | None = None
    """For a stream, what was sent after the cost comment; None for a JSON answer."""
    cost_usd: float | None = None
    """What the call that produced this answer cost (a hit saves this much); None: unpriced."""
    response_model: str | None = None
    finish_reason: str | None = None

    @property
    def is_stream(self) -> bool:
        return self.stream_tail is not None

    @property
    def size(self) -> int:
        return len(self.body) + len(self.stream_tail or b"") + 128


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(CachedAnswer)


def encode_answer(answer: CachedAnswer) -> bytes:
    return _encoder.encode(answer)


def decode_answer(data: bytes) -> CachedAnswer | None:
    """The answer, or None when the bytes are not one (written by another meterline version)."""
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None
