"""The raw row the load generator keeps for every HTTP request it sends.

Tools disagree on what TPOT and ITL mean (vLLM excludes the first token, GuideLLM includes it), so the
load generator stores raw times only and `serve.metrics` derives every metric from them. `send_time` is
epoch seconds so rows from different processes and machines line up; every other time is seconds after
that request's own send, measured on a monotonic clock, so wall-clock adjustments never bend a latency.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PROFILES = ("synchronous", "poisson", "constant", "concurrent")  # a sweep is made of these
STATUSES = ("ok", "error")


@dataclass
class RequestRecord:
    """One streamed completion request: when it was sent, when its tokens came back, how it ended."""

    request_id: str
    profile: str  # one of PROFILES
    target_rate: float | None  # offered req/s; None for synchronous and fixed-concurrency runs
    send_time: float  # time.time() epoch seconds when the request left the client
    first_token_s: float | None = None  # seconds after send of the first chunk with non-empty text
    chunk_s: list[float] = field(default_factory=list)  # seconds after send of every text chunk
    end_s: float | None = None  # seconds after send when the stream ended (or the request failed)
    prompt_tokens: int = 0
    output_tokens: int = 0  # server usage when reported, else the number of text chunks
    status: str = "ok"  # one of STATUSES
    error: str = ""  # empty when status == "ok"
    warmup: bool = False  # warm-up requests are kept for the record but left out of metrics

    @property
    def ok(self) -> bool:
        """Whether the request completed without error."""
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (for JSON, Arrow or Ray Data)."""
        return asdict(self)
