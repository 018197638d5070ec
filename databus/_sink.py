"""The batching sink that carries a scan's points to Redis without making ``send()`` wait.

``FlushPolicy`` only decides (from what is buffered and whether a flush is in flight):
flush now, keep batching, block the producer, or drop the oldest points. ``Sink`` owns the
background flusher (a thread, or a greenlet under gevent), its connection and pipeline.

The policy that makes us fast at every rate: a flush goes out as soon as anything is
buffered and none is in flight (latency at low rates), and everything sent while a flush
is in flight rides the next one, all channels in one round trip (throughput at high
rates). Every flush wakes every reader waiting on the server, so flushes are spaced by
``FlushPolicy.pace``, which grows with the number of readers: twenty readers woken a
thousand times a second would take more CPU than a small machine has. The buffer is
bounded: a full buffer blocks ``send()``; a lossy channel drops its oldest points instead
and counts them.

Errors are never swallowed: the first one stops the flusher, and the next ``send()`` or
``close()`` raises ``FlushFailed`` from it, naming the points not acknowledged. A dropped
connection or a restarted server is not an error: the flusher reconnects, lets the scan
restore what a server restarted empty has lost (``restore``), and sends the batch again.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import redis

from ._encoding import (
    GAP_DROPPED,
    Descriptor,
    FileRef,
    block_entries,
    gap_entry,
    record_entry,
    ref_entry,
    text,
)
from ._errors import BusFull, ClosedError, FlushFailed, ReadTimeout, redact
from ._runners import GeventRunner, ThreadRunner
from ._store.wire import RECONNECT, translated
from ._timing import milliseconds

log = logging.getLogger(__name__)

#: Items below this size are merged with their neighbours into one entry (one copy);
#: larger ones are written from their own memory.
_MERGE_BELOW = 256 * 1024
#: Records per entry of a json channel.
_RECORDS_PER_ENTRY = 4096
#: Points at least this large are copied into a ``BufferPool``, not fresh memory.
POOL_MIN_BYTES = 64 * 1024
#: An idle flusher checks its connection this often (seconds), so a restarted server is
#: noticed, and what it lost restored, even while no points come.
HEARTBEAT_S = 1.0


class Admission(enum.Enum):
    """What to do with an incoming block, as ``FlushPolicy.admit`` decides."""

    ACCEPT = "accept"
    BLOCK = "block"
    DROP_OLDEST = "drop_oldest"


@dataclasses.dataclass(frozen=True)
class FlushPolicy:
    """Pure decisions of the sink. Sizes in bytes.

    max_buffer_bytes: the most a scan holds that Redis has not acknowledged.
    max_flush_bytes: the most one flush (one round trip) carries, so a backlog of frames
        goes out in steady pieces instead of one huge pipeline; never more than half the
        buffer (``flush_budget``), so a lossy channel always has queued points to drop
        while a flush is in flight, and keeps its newest.
    wake_cost_s: what one flush costs each reader it wakes (its read, decode and events,
        and the server's reply), in CPU seconds.
    wake_budget: the CPU (in cores) the wake-ups of all readers may take together.
    max_pace_s: the longest ``pace``: what it may add to a point's latency.
    """

    max_buffer_bytes: int = 256 * 2**20
    max_flush_bytes: int = 32 * 2**20
    wake_cost_s: float = 250e-6
    wake_budget: float = 0.5
    max_pace_s: float = 0.01

    def __post_init__(self) -> None:
        if self.max_buffer_bytes <= 0 or self.max_flush_bytes <= 0:
            raise ValueError("max_buffer_bytes and max_flush_bytes must be > 0")
        if self.wake_cost_s < 0 or self.wake_budget <= 0 or self.max_pace_s < 0:
            raise ValueError("wake_cost_s and max_pace_s must be >= 0, wake_budget > 0")

    def pace(self, readers: int) -> float:
        """Seconds from one flush's start to the next's, when ``readers`` clients wait for
        new entries: every flush wakes each of them, so their wake-ups cost at most
        ``wake_budget`` cores (one reader: 0.5 ms, twenty: 10 ms, by default)."""
        return min(self.max_pace_s, readers * self.wake_cost_s / self.wake_budget)

    @property
    def flush_budget(self) -> int:
        """Bytes one flush takes at most."""
        return max(1, min(self.max_flush_bytes, self.max_buffer_bytes // 2))

    def admit(self, buffered: int, incoming: int, lossy: bool) -> Admission:
        """Accept ``incoming`` bytes on top of ``buffered``, block, or drop older points.
        A block larger than the whole buffer is accepted once the buffer is empty."""
        if buffered == 0 or buffered + incoming <= self.max_buffer_bytes:
            return Admission.ACCEPT
        return Admission.DROP_OLDEST if lossy else Admission.BLOCK

    def should_flush(self, pending: bool, in_flight: bool) -> bool:
        """Flush whenever something is pending and no flush is in flight."""
        return pending and not in_flight


@dataclasses.dataclass(frozen=True)
class SinkStatistics:
    """A snapshot of a sink.

    buffered_bytes: array bytes accepted and not yet acknowledged (queued or in flight).
    queued_points: points waiting in the channel queues.
    peak_bytes: the largest ``buffered_bytes`` seen.
    dropped_points: points lossy channels dropped to stay within the buffer.
    flushes: round trips made.
    points_acked: points Redis has acknowledged.
    entries: stream entries written.
    """

    buffered_bytes: int
    queued_points: int
    peak_bytes: int
    dropped_points: int
    flushes: int
    points_acked: int
    entries: int


class BufferPool:
    """Reused one-point buffers for large points (frames), shared by a bus's scans.

    A fresh 2 MiB array costs page faults (1.3 ms here, more while other threads want the
    GIL); a copy into a warm buffer takes 0.09 ms. Buffers come back once Redis has
    acknowledged them; at most ``max_bytes`` of free buffers are kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._free: dict[tuple[str, tuple[int, ...]], list[np.ndarray]] = {}
        self._free_bytes = 0
        self._owned: set[int] = set()
        self._lock = threading.Lock()

    def copy(self, block: np.ndarray) -> np.ndarray:
        """A copy of ``block`` in a pooled buffer of its dtype and shape."""
        shelf = (block.dtype.str, block.shape)
        with self._lock:
            free = self._free.get(shelf)
            staged = free.pop() if free else None
            if staged is not None:
                self._free_bytes -= staged.nbytes
        if staged is None:
            # Fresh memory page-faults (1.3 ms per 2 MiB here): np.copyto lets the flusher
            # run meanwhile, as it releases the GIL.
            staged = np.empty_like(block)
            np.copyto(staged, block)
            with self._lock:
                self._owned.add(id(staged))
            return staged
        # Into a warm buffer, a memoryview copy is a plain memcpy that keeps the GIL:
        # taking the GIL back from the busy flusher after np.copyto costs more than the copy.
        staged.reshape(-1).view(np.uint8).data[:] = block.reshape(-1).view(np.uint8).data
        return staged

    def recycle(self, items: list[Any]) -> None:
        """Take back the pooled buffers among ``items`` (others are ignored)."""
        with self._lock:
            for item in items:
                if id(item) not in self._owned:
                    continue
                if self._free_bytes + item.nbytes > self.max_bytes:
                    self._owned.discard(id(item))
                    continue
                self._free.setdefault((item.dtype.str, item.shape), []).append(item)
                self._free_bytes += item.nbytes


class ChannelBuffer:
    """The sink's side of one channel: a queue of accepted points and the index of the
    first of them. Items are Python scalars (one point each, the fast path), numpy blocks
    of shape ``(n, *shape)``, packed records (json channels) or ``FileRef`` (ref channels)."""

    def __init__(self, desc: Descriptor, key: str, fast_limit: int) -> None:
        self.desc = desc
        self.key = key
        self._queue: collections.deque[Any] = collections.deque()
        #: Points the fast path may queue; -1 once closed, so the fast path always fails.
        self._fast_limit = fast_limit
        self._queued_bytes = 0  # bytes of queued items that are not Python scalars
        self._head_index = 0  # index of the first queued point (flusher side)
        self._sent_end = 0  # index after the last point (or gap) put into a batch
        #: Index after the last point (or gap) the server acknowledged.
        self.acked_end = 0
        self._acked = 0
        self._dropped = 0
        self._expiring = False
        self._lock: Any = None  # set by the sink for lossy channels

    @property
    def accepted(self) -> int:
        """Points accepted so far: acknowledged, queued, in flight or dropped."""
        return self._head_index + _points_in(list(self._queue))


def _point_count(item: Any) -> int:
    kind = type(item)
    if kind is np.ndarray or kind is FileRef:
        return len(item)
    if kind is _Gap:
        return item.count
    return 1


def _item_bytes(item: Any) -> int:
    kind = type(item)
    if kind is np.ndarray:
        return item.nbytes
    if kind is bytes:
        return len(item)
    return 0


@dataclasses.dataclass
class _Batch:
    """What one flush carries: commands, and per channel the points they hold."""

    commands: list[tuple[Any, ...]] = dataclasses.field(default_factory=list)
    points: dict[ChannelBuffer, int] = dataclasses.field(default_factory=dict)
    ends: dict[ChannelBuffer, int] = dataclasses.field(default_factory=dict)
    blocks: list[Any] = dataclasses.field(default_factory=list)
    nbytes: int = 0


class Sink:
    """Flushes the queues of a scan's channels to Redis in the background.

    ``client`` is a dedicated redis-py client (see ``Bus.publisher_client``); ``pool``
    takes back the frame buffers of acknowledged points; ``refresh_keys`` returns the
    scan's keys whose TTL the flusher renews every
    ``running_ttl / 4`` seconds while the scan runs; ``restore`` is called after every
    reconnection, before the batch is sent again (it raises redis-py's errors);
    ``revive`` on every reconnection attempt (``Bus.revive_server``: the embedded server
    is started again if it died).
    """

    def __init__(
        self,
        client: redis.Redis,
        runner: ThreadRunner | GeventRunner,
        *,
        policy: FlushPolicy,
        running_ttl: float,
        refresh_keys: Callable[[], list[str]],
        url: str,
        pool: BufferPool,
        guard: Callable[..., Any] | None = None,
        restore: Callable[[], None] | None = None,
        revive: Callable[[], None] | None = None,
        bus_full_timeout: float = 30.0,
        reconnect_timeout: float = 60.0,
        name: str = "databus-sink",
    ) -> None:
        self._client = client
        self._guard = guard
        self._restore = restore
        self._revive = revive
        self._bus_full_timeout = bus_full_timeout
        self._reconnect_timeout = reconnect_timeout
        self._oom_since: float | None = None
        self._next_guard = 0.0
        with translated(url):
            self._conn: Any = client.connection_pool.get_connection()
        self.pool = pool
        self._runner = runner
        self.policy = policy
        self._running_ttl = running_ttl
        self._ttl_ms = milliseconds(running_ttl)
        self._refresh_keys = refresh_keys
        self._url = url
        self._channels: list[ChannelBuffer] = []
        self._lock = runner.lock()
        self._wake = runner.event()
        self._space = runner.event()
        self.idle = False
        self._closing = False
        self._error: BaseException | None = None
        self._buffered = 0
        self._peak = 0
        self._flushes = 0
        self._entries = 0
        self._next_refresh = time.monotonic() + running_ttl / 4
        self._next_heartbeat = time.monotonic() + HEARTBEAT_S
        #: Readers seen waiting on the server, the last few times it was asked (None:
        #: this client may not ask); the flushes are paced by the most of them.
        self._readers: collections.deque[int] | None = collections.deque([0], maxlen=5)
        self._next_count = 0.0
        self._pace = 0.0
        self._last_flush = 0.0
        self._task = runner.spawn(self._run, name)

    # ------------------------------------------------------------ producer side

    def add(self, buf: ChannelBuffer) -> None:
        """Start flushing ``buf``'s queue."""
        if buf.desc.lossy:
            buf._lock = self._runner.lock()
        with self._lock:
            self._channels = [*self._channels, buf]

    def wake(self) -> None:
        """Tell an idle flusher that points are waiting."""
        self._wake.set()

    def check(self) -> None:
        """Raise the flusher's error, or ``ClosedError`` once closed."""
        if self._error is not None:
            raise self._failure()
        if self._closing:
            raise ClosedError("this scan has ended: send() is closed")

    def put(self, buf: ChannelBuffer, item: Any, nbytes: int, timeout: float | None = None) -> None:
        """Queue ``item`` (``nbytes`` of array data) on ``buf``, blocking while the buffer is
        full (or, for a lossy channel, dropping its oldest points). ``timeout`` None waits
        as long as it takes; ``ReadTimeout`` if the room did not come in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check()
            with self._lock:
                verdict = self.policy.admit(self._buffered, nbytes, buf.desc.lossy)
                if verdict is Admission.DROP_OLDEST and self._drop_oldest(buf, nbytes):
                    verdict = Admission.ACCEPT
                if verdict is Admission.ACCEPT:
                    self._buffered += nbytes
                    self._peak = max(self._peak, self._buffered)
                    buf._queued_bytes += nbytes
                    buf._queue.append(item)
                    break
                self._space.clear()
            if verdict is Admission.DROP_OLDEST:
                # Nothing of this channel left to drop: the newest point is the one lost.
                buf._dropped += _point_count(item)
                self._drop_item(buf, item)
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ReadTimeout(
                    f"channel {buf.desc.name!r}: the scan's buffer stayed full "
                    f"({self._buffered} bytes buffered) for {timeout} s"
                )
            self._wake.set()
            self._space.wait(0.05 if remaining is None else min(0.05, remaining))
        if self.idle:
            self._wake.set()

    def wait_room(self, buf: ChannelBuffer) -> None:
        """Block while ``buf``'s fast-path queue is full."""
        while len(buf._queue) >= buf._fast_limit >= 0:
            self.check()
            self._space.clear()
            self._wake.set()
            self._space.wait(0.05)
        self.check()

    def _drop_oldest(self, buf: ChannelBuffer, nbytes: int) -> bool:
        """Drop ``buf``'s oldest queued items until ``nbytes`` fit; False if they cannot."""
        with buf._lock:
            while (
                buf._queue
                and self.policy.admit(self._buffered, nbytes, True) is not Admission.ACCEPT
            ):
                old = buf._queue.popleft()
                count = _point_count(old)
                buf._head_index += count
                if type(old) is not _Gap:
                    buf._dropped += count
                self._buffered -= _item_bytes(old)
                buf._queued_bytes -= _item_bytes(old)
            fits = self.policy.admit(self._buffered, nbytes, True) is Admission.ACCEPT
        return fits

    def _drop_item(self, buf: ChannelBuffer, item: Any) -> None:
        """Account for an incoming item that a full lossy channel could not take."""
        with buf._lock:
            if not buf._queue:
                buf._head_index += _point_count(item)
            elif type(buf._queue[-1]) is _Gap:
                buf._queue[-1].count += _point_count(item)
            else:
                # Keep index order: the dropped point sits behind what is queued.
                buf._queue.append(_Gap(_point_count(item)))

    # ------------------------------------------------------------ flusher side

    def _run(self) -> None:
        try:
            while True:
                pending = any(buf._queue for buf in self._channels)
                if not self.policy.should_flush(pending, in_flight=False):
                    if self._closing:
                        # Make sure of the server before the scan writes its end: one
                        # restarted empty gets the scan's record back first.
                        self._transact([("PING",)])
                        return
                    self._refresh_if_due()
                    self.idle = True
                    self._wake.clear()
                    if not any(buf._queue for buf in self._channels) and not self._closing:
                        due = min(self._next_refresh, self._next_heartbeat)
                        self._wake.wait(max(0.0, due - time.monotonic()))
                    self.idle = False
                    continue
                wait = self._last_flush + self._pace - time.monotonic()
                if wait > 0 and not self._closing and not self._backlog():
                    # Producers wake a busy flusher only when their queue or the buffer
                    # fills up.
                    self._wake.clear()
                    self._wake.wait(wait)
                    continue
                self._last_flush = time.monotonic()
                self._flush_once()
        except BaseException as exc:
            self._error = exc
            log.error(
                "databus sink for %s stopped: %s: %s", redact(self._url), type(exc).__name__, exc
            )
            for buf in self._channels:
                buf._fast_limit = -1
        finally:
            self._space.set()

    def _backlog(self) -> bool:
        """Enough is queued to flush without waiting for the pace: a flush's worth of
        bytes, or a scalar queue half full (its producer would soon block)."""
        if self._buffered >= self.policy.flush_budget:
            return True
        return any(len(buf._queue) * 2 >= buf._fast_limit for buf in self._channels)

    def _flush_once(self) -> None:
        batch = _Batch()
        for buf in self._channels:
            if buf._queue:
                self._collect(buf, batch)
            if batch.nbytes >= self.policy.flush_budget:
                break
        commands = batch.commands
        if time.monotonic() >= self._next_refresh:
            commands = commands + self._refresh_commands()
        self._guard_if_due()
        self._count_readers_if_due()
        while True:
            try:
                self._transact(commands)
                break
            except redis.OutOfMemoryError as exc:
                self._wait_for_memory(exc)  # the server applied nothing: send it all again
        if self._oom_since is not None:
            log.warning(
                "the server has room again after %.1f s", time.monotonic() - self._oom_since
            )
            self._oom_since = None
        self._flushes += 1
        self._entries += sum(1 for c in batch.commands if c[0] == "XADD")
        with self._lock:
            self._buffered -= batch.nbytes
        for buf, count in batch.points.items():
            buf._acked += count
        for buf, end in batch.ends.items():
            buf.acked_end = end
        if batch.blocks:
            self.pool.recycle(batch.blocks)
        self._space.set()

    def _collect(self, buf: ChannelBuffer, batch: _Batch) -> None:
        """Move ``buf``'s queued points into ``batch`` as XADD commands."""
        lock = buf._lock
        if lock is not None:
            lock.acquire()
        try:
            items, count, nbytes, gaps = self._take(buf, self.policy.flush_budget - batch.nbytes)
            first = buf._head_index
            buf._head_index += count + gaps
        finally:
            if lock is not None:
                lock.release()
        entries = self._entries_for(buf.desc, first, items, gaps > 0)
        if first > buf._sent_end:  # a lossy channel dropped points that were never sent
            batch.commands.append(_xadd(buf.key, *gap_entry(buf._sent_end, first, GAP_DROPPED)))
        buf._sent_end = first + count + gaps
        batch.ends[buf] = buf._sent_end
        for index, fields in entries:
            batch.commands.append(_xadd(buf.key, index, fields))
        if not buf._expiring and batch.commands:
            batch.commands.append(("PEXPIRE", buf.key, self._ttl_ms))
            buf._expiring = True
        batch.points[buf] = batch.points.get(buf, 0) + count
        batch.nbytes += nbytes
        if nbytes:
            batch.blocks += items

    def _take(self, buf: ChannelBuffer, budget: int) -> tuple[list[Any], int, int, int]:
        """Pop queued items worth about ``budget`` bytes: (items, points, bytes, dropped)."""
        queue = buf._queue
        pop = queue.popleft
        with self._lock:
            n = len(queue)
            only_scalars = buf._queued_bytes == 0 and buf.desc.kind == "array"
        if only_scalars and buf._lock is None:
            return [pop() for _ in range(n)], n, 0, 0
        items: list[Any] = []
        count = nbytes = gaps = 0
        while queue and (not items or nbytes < budget):
            item = pop()
            items.append(item)
            if type(item) is _Gap:
                gaps += item.count
            else:
                count += _point_count(item)
                nbytes += _item_bytes(item)
        with self._lock:
            buf._queued_bytes -= nbytes
        return items, count, nbytes, gaps

    def _entries_for(
        self, desc: Descriptor, first: int, items: list[Any], gaps: bool
    ) -> Iterator[tuple[bytes, dict[bytes, Any]]]:
        """Entries for ``items`` from index ``first``: a gap marker for each run of
        dropped points (``gaps`` says whether there are any), data entries for the rest."""
        for index, run in _runs(first, items) if gaps else [(first, items)]:
            if isinstance(run, _Gap):
                yield gap_entry(index, index + run.count, GAP_DROPPED)
            elif desc.kind == "json":
                for start in range(0, len(run), _RECORDS_PER_ENTRY):
                    yield record_entry(index + start, run[start : start + _RECORDS_PER_ENTRY])
            elif desc.kind == "ref":
                for ref in run:
                    yield ref_entry(index, ref)
                    index += len(ref)
            else:
                for start, block in _blocks(desc, index, run):
                    yield from block_entries(desc, start, block)

    def _transact(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` as one MULTI/EXEC in one write, and raise the first error;
        returns EXEC's replies.

        MULTI/EXEC so a blocked reader is served once, after the whole flush, with every
        channel's points (and every part of a split frame): after a plain pipeline's first
        XADD the server wakes it with that alone, and it needs another round trip for the
        rest. The sink's own connection and packing, rather than redis-py's Pipeline,
        because its bookkeeping costs the flusher more GIL time than the I/O."""
        resent = False
        lost_since: float | None = None
        while True:
            try:
                if resent:
                    self._conn.connect()
                    if self._restore is not None:
                        self._restore()
                replies = self._exchange(commands, resent)
                break
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                # The connection dropped or the server restarted: reconnect, restore what
                # an empty server lost, and send the batch again. Entry IDs are point
                # indices, so what the server already has is refused as "equal or
                # smaller", which _exchange takes as written.
                now = time.monotonic()
                lost_since = lost_since or now
                if now - lost_since > self._reconnect_timeout:
                    raise
                if not resent:
                    log.warning(
                        "lost the server at %s (%s); reconnecting for up to %g s",
                        redact(self._url),
                        exc,
                        self._reconnect_timeout,
                    )
                resent = True
                self._conn.disconnect()
                if self._revive is not None:
                    self._revive()
                time.sleep(RECONNECT.compute(now - lost_since))
        self._next_heartbeat = time.monotonic() + HEARTBEAT_S
        if resent:
            log.warning("reconnected to %s and sent the batch again", redact(self._url))
        return replies

    def _exchange(self, commands: list[tuple[Any, ...]], resent: bool) -> list[Any]:
        """One MULTI/EXEC round trip; after a reconnect (``resent``), entries the server
        already holds are not an error. Returns EXEC's replies."""
        conn = self._conn
        conn.send_packed_command(
            conn.pack_commands([("MULTI",), *commands, ("EXEC",)]), check_health=False
        )
        first: BaseException | None = None
        replies: list[Any] = []
        for _ in range(len(commands) + 2):  # +OK, QUEUED..., then EXEC's array
            try:
                reply = conn.read_response()
            except redis.ResponseError as exc:
                first = first or exc
                continue
            if isinstance(reply, list):
                replies = reply
                errors = [r for r in reply if isinstance(r, Exception)]
                if resent:
                    errors = [e for e in errors if "equal or smaller" not in str(e)]
                first = first or (errors[0] if errors else None)
        if first is not None:
            raise first
        return replies

    def _guard_if_due(self) -> None:
        """Run the memory guard about once a second while data flows."""
        now = time.monotonic()
        if self._guard is not None and now >= self._next_guard:
            self._next_guard = now + 1.0
            self._guard()

    def _count_readers_if_due(self) -> None:
        """About once a second while data flows: how many clients wait on the server for
        new entries (``blocked_clients``), to pace the flushes (``FlushPolicy.pace``)."""
        now = time.monotonic()
        if self._readers is None or now < self._next_count:
            return
        self._next_count = now + 1.0
        try:
            (info,) = self._transact([("INFO", "clients")])
        except redis.ResponseError as exc:  # an ACL user without INFO: flush unpaced
            log.info("cannot count the readers (%s): flushes are not paced", exc)
            self._readers = None
            return
        blocked = [line for line in text(info).splitlines() if line.startswith("blocked_clients:")]
        self._readers.append(int(blocked[0].split(":")[1]) if blocked else 0)
        self._pace = self.policy.pace(max(self._readers))

    def _wait_for_memory(self, exc: BaseException) -> None:
        """The server is at its cap: evict what can go, wait, or give up with BusFull."""
        now = time.monotonic()
        if self._oom_since is None:
            self._oom_since = now
            log.warning(
                "the server at %s is at its memory cap: send() waits for room (BusFull after %g s)",
                redact(self._url),
                self._bus_full_timeout,
            )
        if now - self._oom_since > self._bus_full_timeout:
            raise BusFull(
                f"the server at {redact(self._url)} stayed at its memory cap for "
                f"{self._bus_full_timeout:g} s with no ended scan left to delete: running scans "
                f"fill it. Raise its maxmemory, end scans, or declare frame channels lossy=True"
            ) from exc
        if self._guard is not None:
            self._guard(force=True)
        time.sleep(0.05)

    def _refresh_commands(self) -> list[tuple[Any, ...]]:
        self._next_refresh = time.monotonic() + self._running_ttl / 4
        return [("PEXPIRE", key, self._ttl_ms) for key in self._refresh_keys()]

    def _refresh_if_due(self) -> None:
        now = time.monotonic()
        if now >= self._next_refresh:
            self._transact(self._refresh_commands())
        elif now >= self._next_heartbeat:
            self._transact([("PING",)])  # a lost connection shows now, not at the next point

    # ------------------------------------------------------------------ closing

    def _failure(self) -> FlushFailed | BusFull:
        lost = []
        for buf in self._channels:
            accepted = buf.accepted
            if accepted - buf._dropped - buf._acked:
                lost.append(
                    f"{buf.desc.name!r}: {accepted - buf._dropped - buf._acked} of "
                    f"{accepted} points (from index {buf._acked + buf._dropped})"
                )
        detail = "; ".join(lost) if lost else "all accepted points were acknowledged"
        error = self._error
        kind = BusFull if isinstance(error, BusFull) else FlushFailed
        exc = kind(
            f"writing to {redact(self._url)} failed ({type(error).__name__}: {error}); "
            f"not acknowledged: {detail}"
        )
        exc.__cause__ = self._error
        return exc

    def close(self, timeout: float | None = None) -> None:
        """Flush everything accepted, stop the flusher, and raise its error if it had one.
        ``timeout`` None waits as long as the flush takes."""
        self._closing = True
        for buf in self._channels:
            buf._fast_limit = -1
        self._wake.set()
        self._task.join(timeout)
        try:
            if self._error is not None:
                raise self._failure()
            if any(buf._queue for buf in self._channels):
                raise ReadTimeout(f"the sink did not flush everything within {timeout} s")
        finally:
            self._client.connection_pool.release(self._conn)
            self._client.close()

    def statistics(self) -> SinkStatistics:
        """A consistent snapshot of the sink's counters."""
        chans = self._channels
        return SinkStatistics(
            buffered_bytes=self._buffered,
            queued_points=sum(_points_in(list(b._queue)) for b in chans),
            peak_bytes=self._peak,
            dropped_points=sum(b._dropped for b in chans),
            flushes=self._flushes,
            points_acked=sum(b._acked for b in chans),
            entries=self._entries,
        )


@dataclasses.dataclass
class _Gap:
    """Points a lossy channel dropped behind still-queued ones."""

    count: int


def _points_in(items: list[Any]) -> int:
    """Points (and dropped points) that queued items stand for."""
    return sum(map(_point_count, items))


def _xadd(key: str, entry_id: bytes, fields: dict[bytes, Any]) -> tuple[Any, ...]:
    flat: list[Any] = ["XADD", key, entry_id]
    for name, value in fields.items():
        flat += [name, value]
    return tuple(flat)


def _runs(first: int, items: list[Any]) -> Iterator[tuple[int, list[Any] | _Gap]]:
    """Split items at gaps: (first index, run of items) and (first index, gap) pairs."""
    index = first
    run: list[Any] = []
    for item in items:
        if type(item) is _Gap:
            if run:
                yield index, run
                index += _points_in(run)
                run = []
            yield index, item
            index += item.count
        else:
            run.append(item)
    if run:
        yield index, run


def _blocks(desc: Descriptor, first: int, items: list[Any]) -> Iterator[tuple[int, np.ndarray]]:
    """Turn queued items (no gaps) into (first index, block) pairs: scalars and small
    blocks are merged into one block, large ones kept apart (no copy)."""
    dt = desc.dtype
    if desc.shape == () and type(items[0]) is not np.ndarray:
        try:
            arr = np.array(items, dtype=dt)
        except (ValueError, TypeError):
            arr = None
        if arr is not None and arr.shape == (len(items),):
            yield first, arr
            return
    index = first
    small: list[np.ndarray] = []
    small_bytes = 0
    small_first = index

    def merged() -> np.ndarray:
        return small[0] if len(small) == 1 else np.concatenate(small)

    for item in items:
        kind = type(item)
        if kind is np.ndarray and item.nbytes >= _MERGE_BELOW:
            if small:
                yield small_first, merged()
                small, small_bytes = [], 0
            yield index, item
            index += len(item)
            small_first = index
            continue
        block = item if kind is np.ndarray else np.array([item], dtype=dt)
        small.append(block)
        small_bytes += block.nbytes
        index += len(block)
        if small_bytes >= desc.entry_bytes:
            yield small_first, merged()
            small, small_bytes, small_first = [], 0, index
    if small:
        yield small_first, merged()
