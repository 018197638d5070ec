"""The sink that carries a scan's points to Redis without making ``send()`` wait.

``send()`` queues a point on its channel's ``ChannelQueue``; the sink's background flusher
(a thread, or a greenlet under gevent) takes what is queued, has it batched (``Batch``)
and sent (``Sender``), and does its other jobs when ``FlushTimers`` says they are due.

The policy that makes us fast at every rate: a flush goes out as soon as anything is
buffered and none is in flight (latency at low rates), and everything sent while a flush
is in flight rides the next one, all channels in one round trip (throughput at high
rates). Every flush wakes every reader waiting on the server, so flushes are spaced by
``FlushPolicy.pace``, which grows with the number of readers: twenty readers woken a
thousand times a second would take more CPU than a small machine has. The buffer is
bounded: a full buffer blocks ``send()``; a lossy channel drops its oldest points instead
and counts them.

Errors are never swallowed: the first one stops the flusher, and the next ``send()`` or
``close()`` raises ``FlushFailed`` from it, naming the points not acknowledged.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ._batch import Batch, seal_commands
from ._errors import (
    BusFull,
    ClosedError,
    DatabusError,
    FlushFailed,
    ReadTimeout,
    redact,
)
from ._flush_policy import Admission, FlushPolicy
from ._flusher import Flusher
from ._queue import ChannelQueue
from ._runners import GeventRunner, ThreadRunner
from ._sender import Restore, Sender
from ._store import commands
from ._store.commands import Command
from ._store.wire import Wire

log = logging.getLogger(__name__)

#: Points at least this large are copied into a ``BufferPool``, not fresh memory.
POOL_MIN_BYTES = 64 * 1024
#: The commands a scan's end writes, from the failure that ended it (None: all went well).
Ending = Callable[[FlushFailed | None], list[Command]]


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


class Sink:
    """Flushes the queues of a scan's channels to Redis in the background.

    ``wire`` is the scan's own (``Bus.wire_of_own``); ``pool`` takes back the frame
    buffers of acknowledged points; ``refresh_keys`` returns the scan's keys, whose TTL
    the flusher renews while the scan runs; ``guard`` is the memory guard's check;
    ``restore`` and ``revive`` are the ``Sender``'s.
    """

    def __init__(
        self,
        wire: Wire,
        runner: ThreadRunner | GeventRunner,
        *,
        policy: FlushPolicy,
        running_ttl: float,
        refresh_keys: Callable[[], list[str]],
        pool: BufferPool,
        guard: Callable[..., Any] | None = None,
        restore: Restore | None = None,
        revive: Callable[[], None] | None = None,
        bus_full_timeout: float = 30.0,
        reconnect_timeout: float = 60.0,
        name: str = "databus-sink",
    ) -> None:
        self._url = wire.url
        sender = Sender(wire, reconnect_timeout=reconnect_timeout, restore=restore, revive=revive)
        self._flusher = Flusher(
            sender,
            policy,
            url=wire.url,
            running_ttl=running_ttl,
            bus_full_timeout=bus_full_timeout,
            refresh_keys=refresh_keys,
            guard=guard,
        )
        self.pool = pool
        self._runner = runner
        self.policy = policy
        self._queues: list[ChannelQueue] = []
        self._lock = runner.lock()
        self._wake = runner.event()
        self._space = runner.event()
        self.idle = False
        self._closing = False
        self._ending: Ending | None = None
        self._sealing: list[ChannelQueue] = []
        #: The scan's end (``close(ending)``) was acknowledged.
        self.ended = False
        self._error: BaseException | None = None
        self._buffered = 0
        self._peak = 0
        self._flushes = 0
        self._entries = 0
        self._task = runner.spawn(self._run, name)

    # ------------------------------------------------------------ producer side

    def add(self, queue: ChannelQueue) -> None:
        """Start flushing ``queue``."""
        queue.attach(self._lock, self._runner.lock() if queue.desc.lossy else None)
        with self._lock:
            self._queues = [*self._queues, queue]

    def wake(self) -> None:
        """Tell an idle flusher that points are waiting."""
        self._wake.set()

    def check(self) -> None:
        """Raise the flusher's error, or ``ClosedError`` once closed."""
        if self._error is not None:
            raise self._failure()
        if self._closing:
            raise ClosedError("this scan has ended: send() is closed")

    def put(
        self, queue: ChannelQueue, item: Any, nbytes: int, timeout: float | None = None
    ) -> None:
        """Queue ``item`` (``nbytes`` of array data), blocking while the buffer is full
        (or, for a lossy channel, dropping its oldest points). ``timeout`` None waits as
        long as it takes; ``ReadTimeout`` if the room did not come in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check()
            with self._lock:
                verdict = self.policy.admit(self._buffered, nbytes, queue.desc.lossy)
                if verdict is Admission.DROP_OLDEST and self._drop_oldest(queue, nbytes):
                    verdict = Admission.ACCEPT
                if verdict is Admission.ACCEPT:
                    self._buffered += nbytes
                    self._peak = max(self._peak, self._buffered)
                    queue.push(item, nbytes)
                    break
                self._space.clear()
            if verdict is Admission.DROP_OLDEST:
                # Nothing of this channel left to drop: the newest point is the one lost.
                queue.drop_incoming(item)
                return
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise ReadTimeout(
                    f"channel {queue.desc.name!r}: the scan's buffer stayed full "
                    f"({self._buffered} bytes buffered) for {timeout} s"
                )
            self._wake.set()
            self._space.wait(0.05 if remaining is None else min(0.05, remaining))
        if self.idle:
            self._wake.set()

    def lose(self, queue: ChannelQueue, count: int) -> None:
        """Queue a gap of ``count`` lost points in ``queue``, behind what it holds."""
        self.check()
        with self._lock:
            if queue.drop_lock is None:
                queue.lose(count)
            else:  # a lossy channel's gaps are also made under its drop lock
                with queue.drop_lock:
                    queue.lose(count)
        if self.idle:
            self._wake.set()

    def wait_room(self, queue: ChannelQueue) -> None:
        """Block while ``queue``'s fast path is full."""
        while queue.full():
            self.check()
            self._space.clear()
            self._wake.set()
            self._space.wait(0.05)
        self.check()

    def seal(self, *queues: ChannelQueue) -> None:
        """Flush ``queues`` and write their seals, each with its channel's last points (one
        MULTI/EXEC); blocks until the server acknowledged them (``queue.sealed``). The
        queues take no more points; raises the flusher's error if it failed."""
        with self._lock:
            for queue in queues:
                queue.close()
            self._sealing = [*self._sealing, *queues]
        self._wake.set()
        while not all(queue.sealed for queue in queues):
            self.check()
            self._space.clear()
            if not all(queue.sealed for queue in queues):
                self._space.wait(0.05)

    def flush(self, queue: ChannelQueue) -> None:
        """Block until the server acknowledged every point ``queue`` had accepted when
        called (blissdata's ``join``); raises the flusher's error if it failed."""
        target = queue.accepted
        self._wake.set()
        while queue.acked + queue.dropped < target and not queue.sealed:
            if self._error is not None:
                raise self._failure()
            self._space.clear()
            if queue.acked + queue.dropped < target:
                self._space.wait(0.05)

    def _drop_oldest(self, queue: ChannelQueue, nbytes: int) -> bool:
        """Drop ``queue``'s oldest items until ``nbytes`` fit; False if they cannot."""
        with queue.drop_lock:
            while (
                queue.items
                and self.policy.admit(self._buffered, nbytes, True) is not Admission.ACCEPT
            ):
                self._buffered -= queue.drop_oldest()
            return self.policy.admit(self._buffered, nbytes, True) is Admission.ACCEPT

    # ------------------------------------------------------------ flusher side

    def _run(self) -> None:
        timers = self._flusher.timers
        try:
            while True:
                pending = bool(self._sealing) or any(queue.items for queue in self._queues)
                if not self.policy.should_flush(pending, in_flight=False):
                    if self._closing:
                        self._finish()
                        return
                    self._flusher.idle()
                    self.idle = True
                    self._wake.clear()
                    if not any(queue.items for queue in self._queues) and not self._closing:
                        self._wake.wait(timers.idle_wait(time.monotonic()))
                    self.idle = False
                    continue
                wait = timers.flush_wait(time.monotonic())
                if wait > 0 and not self._closing and not self._backlog():
                    # Producers wake a busy flusher only when their queue or the buffer
                    # fills up.
                    self._wake.clear()
                    self._wake.wait(wait)
                    continue
                timers.flushing(time.monotonic())
                self._flush_once()
        except BaseException as exc:
            self._error = exc
            log.error(
                "databus sink for %s stopped: %s: %s", redact(self._url), type(exc).__name__, exc
            )
            for queue in self._queues:
                queue.close()
        finally:
            self._space.set()

    def _backlog(self) -> bool:
        """Enough is queued to flush without waiting for the pace: a flush's worth of
        bytes, or a scalar queue half full (its producer would soon block)."""
        if self._buffered >= self.policy.flush_budget:
            return True
        return any(queue.half_full() for queue in self._queues)

    def _flush_once(self) -> None:
        batch = Batch()
        budget = self.policy.flush_budget
        for queue in self._queues:
            if queue.items:
                batch.collect(queue, budget - batch.nbytes, self._flusher.timers.running_ttl)
            if batch.nbytes >= budget:
                break
        sealed = [queue for queue in self._sealing if not queue.items]
        ttl = self._flusher.timers.running_ttl
        for queue in sealed:
            batch.commands += [*seal_commands(queue), commands.pexpire(queue.key, ttl)]
        self._flusher.flush(batch.commands)
        self._flushes += 1
        self._entries += batch.entries
        with self._lock:
            self._buffered -= batch.nbytes
            if sealed:
                self._sealing = [queue for queue in self._sealing if queue not in sealed]
        for queue, count in batch.points.items():
            queue.acknowledge(count, batch.ends[queue])
        for queue in sealed:
            queue.sealed = True
        if batch.blocks:
            self.pool.recycle(batch.blocks)
        self._space.set()

    def _finish(self) -> None:
        """Everything accepted is acknowledged: send the scan's end (or, with none, make
        sure of the server: one restarted empty gets the scan's record back first)."""
        if self._ending is None:
            self._flusher.send([commands.ping()])
            return
        self._flusher.send(self._ending(None))
        self.ended = True

    # ------------------------------------------------------------------ closing

    def _failure(self) -> FlushFailed | BusFull:
        lost = [m for m in (queue.unacknowledged() for queue in self._queues) if m]
        detail = "; ".join(lost) if lost else "all accepted points were acknowledged"
        error = self._error
        kind = BusFull if isinstance(error, BusFull) else FlushFailed
        exc = kind(
            f"writing to {redact(self._url)} failed ({type(error).__name__}: {error}); "
            f"not acknowledged: {detail}"
        )
        exc.__cause__ = self._error
        return exc

    def close(self, timeout: float | None = None, ending: Ending | None = None) -> None:
        """Flush everything accepted, send the commands of ``ending`` last, stop the
        flusher, and raise its error if it had one (after one attempt at sending the
        ending of the ``FlushFailed``). ``timeout`` None waits as long as it takes."""
        self._ending = ending
        self._closing = True
        for queue in self._queues:
            queue.close()
        self._wake.set()
        self._task.join(timeout)
        try:
            if self._error is not None:
                failure = self._failure()
                if ending is not None and isinstance(failure, FlushFailed):
                    self._end_anyway(ending, failure)
                raise failure
            if any(queue.items for queue in self._queues):
                raise ReadTimeout(f"the sink did not flush everything within {timeout} s")
        finally:
            self._flusher.sender.close()

    def _end_anyway(self, ending: Ending, failure: FlushFailed) -> None:
        try:
            self._flusher.sender.send_once(ending(failure))
            self.ended = True
        except DatabusError as exc:
            log.error("could not record the end at %s: %s", redact(self._url), exc)

    def statistics(self) -> SinkStatistics:
        """A consistent snapshot of the sink's counters."""
        queues = self._queues
        return SinkStatistics(
            buffered_bytes=self._buffered,
            queued_points=sum(queue.queued_points() for queue in queues),
            peak_bytes=self._peak,
            dropped_points=sum(queue.dropped for queue in queues),
            flushes=self._flushes,
            points_acked=sum(queue.acked for queue in queues),
            entries=self._entries,
        )
