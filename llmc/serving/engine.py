"""One served artifact: its runner, its batchers and its counters, without Ray.

``llmc.serving.app`` builds the HTTP app around an :class:`Engine`; uvicorn runs that app in one
process (``llmc serve``) and a Ray Serve replica runs the same app (``--replicas``, ``--address``,
``--emit-config``). Per engine:

* ``/v1/infer`` requests whose inputs agree beyond the batch axis are merged into one run (only
  when the build measured every output's batch axis as axis 0) and split back, requests of
  different lengths padded where the build measured padding harmless; each answer is the
  artifact's answer to that request alone (:meth:`Engine.run_batch`);
* an encoder's task routes go through the task API (``llmc.serving.encoders``), concurrent
  requests merged the same way;
* decoders generate through :class:`~llmc.serving.decoding.Decoding`: continuous batching of
  ``slots`` sequences where the artifact allows it, a prefix KV cache (with the pinned
  ``--system-prompt``), and an optional cache of repeated greedy answers.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import sys
import time
from pathlib import Path
from typing import Any

from llmc.errors import LlmcError
from llmc.model.decoder import is_decoder
from llmc.serving import encoders
from llmc.serving.batcher import Batcher, answers_or_errors
from llmc.serving.bounds import bounds_of
from llmc.serving.metrics import Metrics
from llmc.serving.protocol import cut_to, merge, pad_to_longest, shape_key, specs, split


@dataclasses.dataclass(frozen=True)
class ServeSettings:
    artifact: str
    replicas: int = 1
    threads_per_replica: int = 1
    max_batch_size: int = 8
    batch_wait_ms: float = 5.0
    max_queue: int = 64
    max_elements: int = 4_000_000
    max_body_mb: int = 64  # request bodies past this are 413 before they are read
    max_new_tokens: int = 512
    prefix_cache_mb: int = 256  # decoders: prompts' KV blocks reused across requests (0: off)
    result_cache: int = 0  # answers kept for repeated temperature-0 requests (0: off)
    # Decoders: prompt-lookup drafts for greedy requests where they can run (llmc.generation.speculative)
    speculative: str = "auto"
    slots: int = 8  # decoders: sequences decoded together (continuous batching; 1: one at a time)
    kv_cache_mb: int = 1024  # decoders: the slots' KV buffer (each slot's length: this / slots)
    prefill_chunk: int = 256  # decoders: prompt tokens prefilled between two decode steps
    system_prompt: str | None = None  # decoders: a system message prefilled at start, pinned
    # ONNX Runtime's threads spin while a run lasts and stop when it returns, leaving the cores to
    # the event loop, tokenizer and clients between runs (False: they never spin, between two
    # operators either). Measured on MiniLM /v1/embeddings, 2 cores: never spinning was slower
    # (p50 and requests/s); stopping when a run returns lowered the 1-client p50 in 8 of 10 paired
    # rounds, by ~0.1-0.3 ms, and one 6-round set went the other way by its medians
    # (benchmarks/RESULTS.md, serving; llmc.runtime.ort.SessionConfig)
    spinning: bool = True
    model_name: str | None = None  # the id /v1/models lists (default: the artifact folder's name)

    def to_args(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def served_model(self) -> str:
        return self.model_name or Path(self.artifact).name


class Engine:
    """One process's (or replica's) artifact, batchers and counters."""

    def __init__(self, settings: ServeSettings) -> None:
        import llmc

        self.settings = settings
        self.runner = llmc.load(settings.artifact, threads=settings.threads_per_replica, engine=False,
                                spinning=settings.spinning, spin_after_run=False)
        self.inputs = specs(self.runner.session)
        padding = self.runner.artifact.manifest.padding or {}
        outputs = padding.get("outputs") or {}
        self.mergeable = bool(outputs) and all(v.get("batch_axis") == 0 for v in outputs.values())
        # Requests of different lengths share a run, padded, where the build measured that
        # padding leaves every real position unchanged (the loaded runner then skips it again).
        self.padded_merge = self.mergeable and bool(padding.get("trim", {}).get("safe"))
        self.layout = padding if self.padded_merge else None
        self.decoder = is_decoder(i.name for i in self.inputs)
        from llmc.model.files import MODEL_FILE
        from llmc.model.text import context_length

        path = Path(self.runner.artifact.path)
        self.bounds = bounds_of(path / MODEL_FILE, self.decoder, context_length(path))
        self.metrics = Metrics()
        self.in_flight = 0  # requests admitted and not yet answered (streams until their last event)
        self.results: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        self.decoding = None
        if self.decoder:
            from llmc.serving.decoding import Decoding

            self.decoding = Decoding(self.runner, settings)
        self.task = None  # the task API's view of an encoder (its spec may be None: no task record)
        if not self.decoder:
            from llmc.tasks.model import task_model

            self.task = task_model(self.runner)
        size, wait = settings.max_batch_size, settings.batch_wait_ms / 1e3
        self.infer = Batcher(self.run_batch, size, wait)
        self.embed = Batcher(functools.partial(self._tasks, encoders.embed_batch), size, wait)
        self.rerank = Batcher(functools.partial(self._tasks, encoders.rerank_batch), size, wait)
        self.predict = Batcher(functools.partial(self._tasks, encoders.predict_batch), size, wait)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a run, sequences waiting for a decoding slot."""
        waiting = self.decoding.queued if self.decoding is not None else 0
        return sum(b.depth for b in (self.infer, self.embed, self.rerank, self.predict)) + waiting

    @property
    def prefix(self) -> Any:
        """The decoder's prefix KV cache (None: an encoder, or turned off)."""
        return self.decoding.prefix if self.decoding is not None else None

    def close(self) -> None:
        if self.decoding is not None:
            self.decoding.close()

    def health(self) -> dict[str, Any]:
        """What ``/health`` adds for a decoder: slots, the system prompt, the prefix cache."""
        if self.decoding is None:
            return {}
        return {"slots_in_use": self.decoding.slots_in_use, "system_prompt_tokens": self.decoding.system_tokens,
                "prefix_cache": self.prefix.stats() if self.prefix is not None else None}

    def gauges(self) -> dict[str, tuple[float, str]]:
        """The server's gauges for ``/metrics``."""
        gauges = {"llmc_queue_depth": (self.queue_depth, "Requests waiting for a model run or a decoding slot."),
                  "llmc_requests_in_flight": (self.in_flight, "Requests admitted and not yet answered.")}
        if self.decoding is not None:
            scheduler = self.decoding.scheduler
            gauges["llmc_slots_in_use"] = (self.decoding.slots_in_use, "Decoding slots holding a sequence.")
            rate = scheduler.tokens_per_second() if scheduler is not None else 0.0
            gauges["llmc_tokens_per_second"] = (round(rate, 2), "New tokens per second over the last 10 s.")
            if self.prefix is not None:
                stats = self.prefix.stats()
                looked = stats["hits"] + stats["misses"]
                gauges["llmc_prefix_cache_hit_rate"] = (
                    round(stats["hits"] / looked, 4) if looked else 0.0, "Prompts that found cached blocks.")
        return gauges

    @functools.cached_property
    def embedding_dimension(self) -> int | None:
        """The length of the vectors ``/v1/embeddings`` gives (None: known only after a run)."""
        spec = self.task.spec if self.task is not None else None
        if spec is not None and spec.dimension:
            return spec.dimension
        for output in self.runner.session.get_outputs():
            if output.name in ("sentence_embedding", "last_hidden_state") and isinstance(output.shape[-1], int):
                return output.shape[-1]
        return None

    def _tasks(self, batch: Any, items: list[Any]) -> list[Any]:
        """A task batcher's run: ``batch(task, items)``; a merged run the model refuses is run
        request by request, so that only the refused request gets the error."""
        self.metrics.batch(len(items))
        return answers_or_errors(functools.partial(batch, self.task), items, LlmcError)

    def run_batch(self, batch: list[tuple[dict[str, Any], float]]) -> list[Any]:
        """Run ``(request, arrival time)`` pairs, merged where allowed; results in order. A merged
        run that fails is run again request by request, so that only the request the model
        refuses (e.g. a token id beyond its vocabulary) gets the error (an :class:`LlmcError`)."""
        started = time.perf_counter()
        requests = [feeds for feeds, _ in batch]
        for _, arrival in batch:
            self.metrics.queued(started - arrival)
        results: list[Any] = [None] * len(requests)
        groups: dict[Any, list[int]] = {}
        for index, feeds in enumerate(requests):
            key = index if not self.mergeable else shape_key(feeds, self.layout)
            groups.setdefault(key, []).append(index)
        for members in groups.values():
            group = [requests[i] for i in members]
            lengths = None
            if self.layout is not None:
                group, lengths = pad_to_longest(group, self.layout)
            feeds, rows = merge(group)
            self.metrics.batch(sum(rows))
            try:
                outputs = split(self.runner.run(feeds), rows)
            except LlmcError:
                if len(members) == 1:
                    outputs = [sys.exc_info()[1]]
                else:
                    outputs = [self._alone(request) for request in group]
            for n, (i, out) in enumerate(zip(members, outputs, strict=True)):
                ok = lengths is not None and not isinstance(out, LlmcError)
                results[i] = cut_to(out, lengths[n], self.layout) if ok else out
        return results

    def _alone(self, request: dict[str, Any]) -> Any:
        try:
            return self.runner.run(request)
        except LlmcError as exc:
            return exc
