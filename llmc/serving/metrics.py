"""A replica's counters in Prometheus' text format (one registry per replica, no global state)."""

from __future__ import annotations

import threading

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZES = (1, 2, 4, 8, 16, 32, 64)


class Histogram:
    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds, self.counts, self.total, self.count = bounds, [0] * len(bounds), 0.0, 0

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, help_text: str) -> list[str]:
        out = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        out += [f'{name}_bucket{{le="{b}"}} {c}' for b, c in zip(self.bounds, self.counts, strict=True)]
        out += [f'{name}_bucket{{le="+Inf"}} {self.count}', f"{name}_sum {self.total}", f"{name}_count {self.count}"]
        return out


class Metrics:
    """Requests by outcome, request latency, rows per model run, time to first token, ms/token,
    prefix-cache hits, speculative draft tokens verified and accepted (and the server's gauges)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.request_seconds = Histogram(BUCKETS)
        self.batch_rows = Histogram(SIZES)
        self.ttft_seconds = Histogram(BUCKETS)
        self.token_seconds = Histogram(BUCKETS)
        self.queue_seconds = Histogram(BUCKETS)
        self.cache_hits = 0
        self.drafted = self.accepted = 0

    def count(self, outcome: str) -> None:
        with self._lock:
            self.requests[outcome] = self.requests.get(outcome, 0) + 1

    def latency(self, seconds: float) -> None:
        with self._lock:
            self.request_seconds.observe(seconds)

    def queued(self, seconds: float) -> None:
        with self._lock:
            self.queue_seconds.observe(seconds)

    def batch(self, rows: int) -> None:
        with self._lock:
            self.batch_rows.observe(rows)

    def generation(self, ttft_ms: float, ms_per_token: float, drafted: int = 0, accepted: int = 0) -> None:
        with self._lock:
            self.drafted += drafted
            self.accepted += accepted
            self.ttft_seconds.observe(ttft_ms / 1e3)
            if ms_per_token:
                self.token_seconds.observe(ms_per_token / 1e3)

    def prometheus(self, gauges: dict[str, tuple[float, str]] | None = None) -> str:
        """The counters, and ``gauges`` ({name: (value, help)}: e.g. queue depth, requests in
        flight, read by the server when asked)."""
        with self._lock:
            lines = []
            for name, (value, help_text) in (gauges or {}).items():
                lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {value}"]
            lines += ["# HELP llmc_requests_total Requests by outcome.", "# TYPE llmc_requests_total counter"]
            lines += [f'llmc_requests_total{{outcome="{k}"}} {v}' for k, v in sorted(self.requests.items())]
            lines += self.request_seconds.lines("llmc_request_seconds", "Request latency in the replica.")
            lines += self.batch_rows.lines("llmc_batch_rows", "Rows per model run (dynamic batching).")
            lines += self.queue_seconds.lines("llmc_queue_seconds", "Wait from a request's arrival to its run.")
            lines += self.ttft_seconds.lines("llmc_ttft_seconds", "Time to first token.")
            lines += self.token_seconds.lines("llmc_token_seconds", "Decode time per token.")
            lines += ["# HELP llmc_prefix_cache_hits_total Prefix KV cache hits.",
                      "# TYPE llmc_prefix_cache_hits_total counter", f"llmc_prefix_cache_hits_total {self.cache_hits}"]
            for name, value, what in (("drafted", self.drafted, "verified"), ("accepted", self.accepted, "accepted")):
                lines += [f"# HELP llmc_draft_{name}_total Speculative draft tokens {what}.",
                          f"# TYPE llmc_draft_{name}_total counter", f"llmc_draft_{name}_total {value}"]
            return "\n".join(lines) + "\n"
