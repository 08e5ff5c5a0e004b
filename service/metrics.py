"""Prometheus metrics, one :class:`prometheus_client.CollectorRegistry` per app (never the global default,
so a process — or a test session — can hold many apps), and the ASGI middleware that counts requests.

Names follow Prometheus conventions: durations in ``_seconds``, counters end in ``_total``, one metric per
quantity with labels for its dimensions.

What is served is read at each scrape (:class:`_ServedCollector`: model and index info, index blocks, running
builds), so no series outlives what it describes. ``realmqa serve --workers N`` runs N processes: there
prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the parent before the workers start)
keeps every counter and histogram in files that any worker's ``/metrics`` sums over all of them, and the two
gauges that move per request (in flight, queue depth) are summed over live workers (``livesum``); what is
served is the scraped worker's (every worker follows the same home).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from index.home import parse_version
from service.engine import Engine, ReadStats

# Buckets, chosen per stage from what each one costs (CPU figures from this project; GPU and large indexes
# move the tails, and the wide ends keep those in range):
# - queue wait: ~0 when idle, max_queue_delay_ms (2 ms by default) when gathering, up to seconds when the
#   queue backs up behind running batches — so fine steps below 10 ms and coarse ones up to 10 s.
QUEUE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# - embed: one MiniLM/BERT pass over a batch of short questions, ~2 ms (one question, tiny model) to a few
#   hundred ms (a batch of 32 on BERT-base, CPU).
EMBED_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# - search: exact MIPS over the bundled 21k blocks is well under 5 ms; REALM's 13M-block Flat index takes
#   seconds on CPU — so the buckets start at 0.1 ms and reach 5 s.
SEARCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# - bm25 (hybrid index versions): one sparse score pass per question over the bundled 21k blocks, ~1 ms;
#   fuse: merging two lists of depth 100 and the relevance scores of the fused rows, ~1 ms — the search
#   buckets fit both.
# - read: the costly stage, reader_beam_size rows of up to 384 tokens per question: ~20 ms (one question,
#   small model) to ~10 s (a batch of 32 questions × 5 blocks on CPU).
READ_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
# - total request: the sum, up to the default request_timeout_ms (30 s) where a 504 ends it.
TOTAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)
# - batch size: powers of two up to well past the default max_batch_size (32).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
# - rows per reader pass: one row is one (question, block) pair; a batch of 32 questions × reader beam 5 is
#   160 rows, split into passes of rows of similar length (realm_core.qa.plan_passes).
PASS_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# Engine timing keys → stage names (service.engine's timings_ms).
_STAGES = {"embed_ms": "embed", "search_ms": "search", "bm25_ms": "bm25", "fuse_ms": "fuse", "read_ms": "read"}


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode when this process is a ``--workers`` worker."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class _ServedCollector(Collector):
    """The served state, read at each scrape from :meth:`Metrics.render`'s arguments: one series per loaded
    model version and index version (gauges of value 1, the blocks, the version number) and per running index
    build (blocks embedded so far)."""

    def __init__(self) -> None:
        self.engines: list[Engine] = []
        self.builds: tuple[tuple[str, str, int], ...] = ()

    def describe(self) -> list[Metric]:  # the families without samples, so that registering reads nothing
        return list(self._families([], ()))

    def collect(self) -> Iterator[Metric]:
        return self._families(self.engines, self.builds)

    @staticmethod
    def _families(engines: list[Engine], builds: tuple[tuple[str, str, int], ...]) -> Iterator[Metric]:
        info = GaugeMetricFamily("realmqa_model_info", "1 for each loaded model version and the index it serves",
                                 labels=["model", "version", "index", "index_version"])
        blocks = GaugeMetricFamily("realmqa_index_blocks", "blocks in each index version served",
                                   labels=["index", "version"])
        version = GaugeMetricFamily("realmqa_index_version", "index version each loaded model version serves",
                                    labels=["model", "index"])
        seen: set[tuple[str, str]] = set()
        for e in engines:
            name, _, v = e.model_ref.partition("/")
            index, _, iv = e.index_ref.partition("/")
            info.add_metric([name, v, index, iv], 1)
            if (index, iv) not in seen:
                seen.add((index, iv))
                blocks.add_metric([index, iv], e.block_count)
            if (n := parse_version(iv)) is not None:
                version.add_metric([e.model_ref, index], n)
        running = GaugeMetricFamily("realmqa_index_build_blocks", "blocks embedded so far by each running index "
                                    "build job (the index worker's progress files)", labels=["index", "job"])
        for index, job, n in builds:
            running.add_metric([index, job], n)
        yield from (info, blocks, version, running)


class Metrics:
    """Every realmqa metric, registered in its own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self._served = _ServedCollector()
        self.requests = Counter("realmqa_requests", "HTTP requests by route and status", ["route", "method", "status"],
                                registry=r)
        self.request_duration = Histogram("realmqa_request_duration_seconds", "HTTP request latency, arrival to "
                                          "response", ["route"], buckets=TOTAL_BUCKETS, registry=r)
        self.in_flight = Gauge("realmqa_requests_in_flight", "HTTP requests being handled", registry=r,
                               multiprocess_mode="livesum")
        self.queue_wait = Histogram("realmqa_queue_wait_seconds", "time a request waited in the batch queue",
                                    buckets=QUEUE_BUCKETS, registry=r)
        self.stages = {
            "embed": Histogram("realmqa_embed_duration_seconds", "the request's share of its batch's question "
                               "embedding time",
                               ["model"], buckets=EMBED_BUCKETS, registry=r),
            "search": Histogram("realmqa_search_duration_seconds", "the request's share of its batch's MIPS time",
                                ["model"], buckets=SEARCH_BUCKETS, registry=r),
            "bm25": Histogram("realmqa_bm25_duration_seconds", "the request's share of its batch's BM25 search time "
                              "(hybrid index versions only)", ["model"], buckets=SEARCH_BUCKETS, registry=r),
            "fuse": Histogram("realmqa_fuse_duration_seconds", "the request's share of its batch's fusion of the "
                              "dense and BM25 lists (hybrid index versions only)", ["model"], buckets=SEARCH_BUCKETS,
                              registry=r),
            "read": Histogram("realmqa_read_duration_seconds", "the request's share of its batch's reader time "
                              "(in proportion to its rows' reader tokens)", ["model"],
                              buckets=READ_BUCKETS, registry=r),
        }
        self.batch_size = Histogram("realmqa_batch_size", "requests per engine call", ["kind"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.reader_pass_rows = Histogram("realmqa_reader_pass_rows", "rows (question × block pairs) per reader "
                                          "pass", ["model"], buckets=PASS_ROWS_BUCKETS, registry=r)
        self.reader_tokens = Counter("realmqa_reader_tokens", "reader tokens computed, by kind (real: rows' own "
                                      "tokens; padding)", ["model", "kind"], registry=r)
        self.queue_depth = Gauge("realmqa_queue_depth", "requests waiting in the batch queue", registry=r,
                                 multiprocess_mode="livesum")  # set by the batcher at each change
        self.rejected = Counter("realmqa_rejected_requests", "requests refused or dropped by the batcher",
                                ["reason"], registry=r)
        self.loads = Counter("realmqa_model_loads", "model version loads by result", ["model", "result"], registry=r)
        self.unloads = Counter("realmqa_model_unloads", "model version unloads", ["model"], registry=r)
        self.swaps = Counter("realmqa_model_swaps", "loads that changed the version a model name serves",
                             ["model"], registry=r)
        self.index_swaps = Counter("realmqa_index_swaps", "index version activations by index and result "
                                   "(failure: rejected, the old version kept serving)", ["index", "result"],
                                   registry=r)
        r.register(self._served)
        # the registry /metrics renders: this one, or in a --workers worker every worker's files + what is served
        self._exposed = r
        if (d := multiprocess_dir()) is not None:
            self._exposed = CollectorRegistry()
            multiprocess.MultiProcessCollector(self._exposed, path=d)
            self._exposed.register(self._served)

    def observe_read(self, model_ref: str, stats: ReadStats) -> None:
        """One engine call's reader passes."""
        for n in stats.pass_rows:
            self.reader_pass_rows.labels(model_ref).observe(n)
        self.reader_tokens.labels(model_ref, "real").inc(stats.tokens)
        self.reader_tokens.labels(model_ref, "padding").inc(stats.padded_tokens - stats.tokens)

    def observe_stages(self, model_ref: str, timings_ms: dict[str, float]) -> None:
        for key, stage in _STAGES.items():
            if key in timings_ms:
                self.stages[stage].labels(model_ref).observe(timings_ms[key] / 1e3)

    def on_registry_event(self, event: str, ref: str, result: str) -> None:
        """A :data:`service.registry.Observer`: counts loads, unloads and swaps."""
        if event == "load":
            self.loads.labels(ref, result).inc()
        elif event == "unload":
            self.unloads.labels(ref).inc()
        elif event == "swap":
            self.swaps.labels(ref.split("/")[0]).inc()
        elif event == "index_swap":
            self.index_swaps.labels(ref.split("/")[0], result).inc()

    def render(self, engines: list[Engine], builds: tuple[tuple[str, str, int], ...] = ()) -> bytes:
        """The Prometheus text format, with what is served now (``engines``) and the running index builds
        (``(index, job, blocks embedded)``)."""
        self._served.engines, self._served.builds = list(engines), builds
        try:
            return generate_latest(self._exposed)
        finally:
            self._served.engines, self._served.builds = [], ()


class MetricsMiddleware:
    """Counts every HTTP request by route template (never the raw path: bounded label values), method and
    status, and tracks in-flight requests and their latency. Outermost, so 413s from the body limit count."""

    def __init__(self, app: ASGIApp, metrics: Metrics, static_paths: frozenset[str]) -> None:
        self.app, self.metrics, self.static_paths = app, metrics, static_paths

    def _route(self, scope: Scope) -> str:
        """The matched route's template (set by the router); for requests answered before routing (413
        from the body limit), the path itself when it is one of the app's fixed paths; else "other"."""
        path = getattr(scope.get("route"), "path", None)
        if isinstance(path, str):
            return path
        return str(scope["path"]) if scope["path"] in self.static_paths else "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.in_flight.dec()
            route = self._route(scope)
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.request_duration.labels(route).observe(time.perf_counter() - start)
