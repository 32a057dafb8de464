"""Prometheus instruments of one daemon, and the collector that reads its state.

Each daemon owns a private :class:`~prometheus_client.CollectorRegistry` (tests run
several in one process), fed by three hooks: one per XML-RPC call (rpc/resource.py),
one per driver action (driver/runner.py) and one per database unit of work
(store/database.py).  Gauges are read when scraped: the runner's queue, the session
cache, and image counts, which need the database and are therefore computed on the
DB thread by :meth:`Metrics.refresh` (awaited by the /metrics resource, never on the
reactor) and served from a cache.  Every metric is documented in README "Metrics".

With WORKERS > 1 a scrape reaches whichever worker accepts it, so each worker's page
would be a part of the whole.  The parent then sets PROMETHEUS_MULTIPROC_DIR for the
workers (workers.py), and prometheus_client's multiprocess mode keeps every counter
and histogram in a file per process there; a scrape of any worker sums them all, a
dead worker's counts included (counters never go back).  The in-memory gauges are then
published to those files by each worker every PUBLISH_SECONDS (summed over the live
workers), and daemon_info has one series per live worker.
"""

from __future__ import annotations

import base64
import collections
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import peewee
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from oned_images.domain.states import ImageState
from oned_images.store.models import ImageRow

# The *_created series (a timestamp per labelled child) double the text for nothing
# Prometheus uses; the switch is process-wide, which a daemon process is.
disable_created_metrics()

log = Logger(namespace="OnM")

PREFIX = "oned_images_"
#: XML-RPC calls: a cached info answers in well under a millisecond, a full listing
#: of 10,000 images takes tens of milliseconds, a copy's allocate a few seconds.
CALL_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0, 10.0, 30.0)
#: driver actions: dummy actions end in milliseconds, copies of large images in hours.
DRIVER_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
                  14400.0)
DB_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
              0.5, 1.0, 5.0)
#: image counts are reused for at least this long, and for longer when counting
#: costs more: the count reads every image body (as much as a full listing), so it
#: may take at most COUNT_BUDGET of one database thread's time, whatever scrapes ask.
MIN_REFRESH_SECONDS = 2.0
COUNT_BUDGET = 0.05
#: images counted per transaction: calls queued for the database run in between.
COUNT_CHUNK = 1000
#: WORKERS > 1: how often each worker publishes its in-memory gauges for the others'
#: scrapes (a scraped worker publishes its own first).
PUBLISH_SECONDS = 1.0

#: the gauges read from memory at scrape time (Metrics.read_state's keys), with help.
STATE_GAUGES = (
    ("driver_queued_actions", "Driver actions waiting for a slot or for the action "
     "before them on the same object"),
    ("driver_running_actions", "Driver actions running now"),
    ("cached_sessions", "Checked session secrets held in the session cache"),
    ("cache_reloads", "Cache reloads because a daemon (this or another on the same "
     "database) wrote the cached tables"),
    ("cache_checks", "Reads of the cache counters on the database before a call "
     "(another daemon is live; WORKERS read shared memory instead)"),
)
DAEMON_INFO_HELP = "This daemon among those serving one database (DAEMON_NAME)"


def shared_between_processes() -> bool:
    """prometheus_client's multiprocess mode is on in this process: its values live in
    files under PROMETHEUS_MULTIPROC_DIR (chosen when the library was imported)."""
    return values.ValueClass is not values.MutexValue
#: the call label for method names the daemon does not know (client-chosen strings
#: must not create series without bound).
UNKNOWN_METHOD = "unknown"

_HEAD_LEN = len(b'<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n')
_FAILURE_CODE = re.compile(rb"<i4>(-?\d+)</i4>")
_IMAGE_SIZE = re.compile(rb"<SIZE>(\d+)</SIZE>")
AUTHENTICATION_FAILED = 0x0100

#: image counts per (datastore id, state) over one range of ids.  The state is the
#: first <STATE> of the body, the image's own (LOCK and every element before it hold
#: no STATE; TEMPLATE, where a user may write one, comes after).
_COUNT_SQL = (
    "SELECT datastore_id, CAST({trim}substr(body, {find}(body, '<STATE>') + 7, 2){trimmed} "
    "AS INTEGER), COUNT(*) FROM image_pool WHERE oid >= {mark} AND oid < {mark} "
    "GROUP BY 1, 2")
_COUNT_SQLITE = _COUNT_SQL.format(trim="", find="instr", trimmed="", mark="?")
_COUNT_POSTGRES = _COUNT_SQL.format(trim="rtrim(", find="strpos", trimmed=", '<')",
                                    mark="%s")


def call_outcome(payload: bytes) -> tuple[str, int]:
    """(result, failure code) of a reply built by rpc/wire.py, the only producer:
    a fault starts with <fault> after the head; oned's failure array starts with
    boolean 0 and its first <i4> is the error code (the message before it is escaped,
    so it cannot hold a literal tag)."""
    body = payload[_HEAD_LEN:_HEAD_LEN + 96]
    if body.startswith(b"<fault>"):
        return "fault", 0
    if b"<boolean>0</boolean>" in body:
        match = _FAILURE_CODE.search(payload, _HEAD_LEN)
        return "failure", int(match.group(1)) if match else 0
    return "success", 0


def image_bytes(drv_action_b64: str) -> int:
    """Bytes an image holds, from the SIZE (MiB) of the IMAGE that leads the action's
    DS_DRIVER_ACTION_DATA: no stock CP/CLONE script reports what it copied."""
    try:
        doc = base64.b64decode(drv_action_b64)
    except ValueError:
        return 0
    match = _IMAGE_SIZE.search(doc)
    return int(match.group(1)) * 1024 * 1024 if match else 0


class Metrics:
    """The instruments, the hooks that feed them and the scrape-time collector."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        reg = self.registry
        self.calls = Counter(
            PREFIX + "xmlrpc_calls", "XML-RPC calls answered, by method and result "
            "(success, failure: oned's error array, fault: an XML-RPC fault)",
            ["method", "result"], registry=reg)
        self.call_seconds = Histogram(
            PREFIX + "xmlrpc_call_duration_seconds", "Time from the received request "
            "body (parsing included) to the reply payload, by method", ["method"], buckets=CALL_BUCKETS,
            registry=reg)
        self.login_failures = Counter(
            PREFIX + "login_failures", "Calls refused because the session did not "
            "authenticate", registry=reg)
        self.driver_actions = Counter(
            PREFIX + "driver_actions", "Datastore driver actions ended, by action, "
            "DS_MAD and result (success, failure, timeout, cancelled)",
            ["action", "ds_mad", "result"], registry=reg)
        self.driver_seconds = Histogram(
            PREFIX + "driver_action_duration_seconds", "Run time of driver actions "
            "(queueing excluded), by action and DS_MAD", ["action", "ds_mad"],
            buckets=DRIVER_BUCKETS, registry=reg)
        self.copied = Counter(
            PREFIX + "driver_copied_bytes", "Bytes brought into datastores by "
            "successful CP and CLONE actions (the image SIZE)", ["action", "ds_mad"],
            registry=reg)
        self.db_seconds = Histogram(
            PREFIX + "db_transaction_duration_seconds", "Time one unit of database work "
            "(one transaction) holds a DB thread", buckets=DB_BUCKETS, registry=reg)
        self._call_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._state: Callable[[], dict[str, float]] = dict
        self._snapshot: dict[str, float] = {}
        self._images: dict[tuple[int, int], int] = {}
        self._images_at: float | None = None
        self._counting: defer.Deferred | None = None
        self._reuse = MIN_REFRESH_SECONDS
        self._waiters: list[defer.Deferred] = []
        #: WORKERS > 1: the page sums every worker's files (module docstring)
        self.shared = shared_between_processes()
        self.daemon_info = Gauge(PREFIX + "daemon_info", DAEMON_INFO_HELP, ["host", "name"],
                                 multiprocess_mode="livemax", registry=reg)
        self._state_gauges: dict[str, Gauge] = {}
        #: DAEMON_NAME, once known: the scrape's X-Daemon-Name header says which daemon
        #: (which worker) answered
        self.name = ""
        if self.shared:
            self._state_gauges = {
                name: Gauge(PREFIX + name, help_text, multiprocess_mode="livesum",
                            registry=reg) for name, help_text in STATE_GAUGES}
            self.page = CollectorRegistry()
            MultiProcessCollector(self.page)
            self.page.register(_ImagesCollector(self))
        else:
            reg.register(_StateCollector(self))
            reg.register(_ImagesCollector(self))
            #: what a scrape encodes
            self.page = reg

    # ----------------------------------------------------------------- hooks
    def call_done(self, method: str, payload: bytes, seconds: float) -> None:
        """One XML-RPC call answered (``method`` already folded to a known name)."""
        result, code = call_outcome(payload)
        children = self._call_children.get((method, result))
        if children is None:  # labels() costs more than the update: look it up once
            children = self._call_children[(method, result)] = (
                self.calls.labels(method, result), self.call_seconds.labels(method))
        children[0].inc()
        children[1].observe(seconds)
        if code == AUTHENTICATION_FAILED:
            self.login_failures.inc()

    def driver_done(self, ds_mad: str, drv_action_b64: str, result: Any,
                    seconds: float) -> None:
        """One driver action ended with its DriverResult."""
        if result.ok:
            outcome = "success"
        elif result.timed_out:
            outcome = "timeout"
        elif result.cancelled:
            outcome = "cancelled"
        else:
            outcome = "failure"
        self.driver_actions.labels(result.action, ds_mad, outcome).inc()
        self.driver_seconds.labels(result.action, ds_mad).observe(seconds)
        if result.ok and result.action in ("cp", "clone"):
            self.copied.labels(result.action, ds_mad).inc(image_bytes(drv_action_b64))

    def db_done(self, seconds: float) -> None:
        """One transaction ended (called on the DB thread; prometheus_client locks)."""
        self.db_seconds.observe(seconds)

    def name_daemon(self, name: str, host: str) -> None:
        """oned_images_daemon_info{name, host} 1: which of several daemons this is."""
        self.daemon_info.labels(host, name).set(1)
        self.name = name

    def read_state(self, fn: Callable[[], dict[str, float]]) -> None:
        """``fn`` returns the in-memory gauges (driver queue, sessions) at scrape time."""
        self._state = fn

    def snapshot(self) -> None:
        """Read the in-memory gauges now, on the reactor, which owns that state: the
        text is then generated on a thread (about 10 ms of CPU for a thousand series)."""
        self._snapshot = self._state()
        self.publish(self._snapshot)

    def publish(self, state: dict[str, float] | None = None) -> None:
        """WORKERS > 1: this worker's in-memory gauges into its files, for any worker's
        scrape (on the reactor, every PUBLISH_SECONDS and before this worker's own)."""
        if not self._state_gauges:
            return
        state = self._state() if state is None else state
        for name, gauge in self._state_gauges.items():
            gauge.set(state.get(name, 0))

    # ---------------------------------------------------------- image counts
    async def refresh(self, db: Any) -> None:
        """Recount images on the DB threads unless the last count is still fresh;
        concurrent scrapes share one count, and a failed count keeps the last one."""
        if self._images_at is not None and self.clock() - self._images_at < self._reuse:
            return
        if self._counting is None:
            self._counting = defer.ensureDeferred(self._count(db))
            self._counting.addBoth(self._counted)
        waiter: defer.Deferred = defer.Deferred()
        self._waiters.append(waiter)
        await waiter

    async def _count(self, db: Any) -> tuple[dict[tuple[int, int], int], float]:
        sql = _COUNT_POSTGRES if db.is_postgres else _COUNT_SQLITE
        top = await db.run(_max_oid)
        counts: collections.Counter = collections.Counter()
        busy = 0.0
        for low in range(0, top + 1, COUNT_CHUNK):
            part, seconds = await db.run(_count_images, db.db, sql, low, low + COUNT_CHUNK)
            counts.update(part)
            busy += seconds
        return dict(counts), busy

    def _counted(self, result: Any) -> None:
        self._counting = None
        if isinstance(result, Failure):
            log.failure("counting images for /metrics failed", result)
        else:
            self._images, busy = result
            self._images_at = self.clock()
            self._reuse = max(MIN_REFRESH_SECONDS, busy / COUNT_BUDGET)
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)


def _max_oid() -> int:
    return ImageRow.select(peewee.fn.MAX(ImageRow.oid)).scalar() or 0


def _count_images(database: Any, sql: str, low: int,
                  high: int) -> tuple[dict[tuple[int, int], int], float]:
    started = time.perf_counter()
    rows = database.execute_sql(sql, (low, high)).fetchall()
    counts = {(int(ds), int(state)): int(n) for ds, state, n in rows if state is not None}
    return counts, time.perf_counter() - started


def _state_name(state: int) -> str:
    try:
        return ImageState(state).name
    except ValueError:
        return str(state)


class _StateCollector:
    """Gauges read at scrape time from memory: nothing here waits on anything."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        state = self.metrics._snapshot
        for name, help_text in STATE_GAUGES:
            if name in state:
                yield GaugeMetricFamily(PREFIX + name, help_text, value=state[name])


class _ImagesCollector:
    """Image counts from the database (Metrics.refresh): the same whichever daemon
    or worker counts them, so never summed."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        images = GaugeMetricFamily(
            PREFIX + "images", "Images by state and datastore id (counted on the "
            "database at scrape time, at most once a second)", labels=["state", "datastore"])
        for (ds, st), n in sorted(self.metrics._images.items()):
            images.add_metric([_state_name(st), str(ds)], n)
        yield images
