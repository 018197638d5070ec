"""The sink's decisions, pure (no I/O; the clock is passed in), tested without a server.

``FlushPolicy`` decides from what is buffered: accept a point, block its producer, or drop
a lossy channel's oldest; how much one flush carries; how far apart flushes go for the
readers they wake. ``FlushTimers`` decides when the flusher does its other jobs: renew
the scan's TTLs, check an idle connection, run the memory guard, count the readers, wait
between flushes, and how long to wait for room on a server at its memory cap.
"""

from __future__ import annotations

import collections
import dataclasses
import enum

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


class Job(enum.Enum):
    """A flusher's job besides sending points, as ``FlushTimers`` says it is due."""

    REFRESH = "refresh"  # renew the running TTL of the scan's keys
    HEARTBEAT = "heartbeat"  # check the connection while idle
    GUARD = "guard"  # run the memory guard
    COUNT_READERS = "count_readers"  # count the readers waiting on the server


class FullServer(enum.Enum):
    """What to do when the server refused a flush for want of memory."""

    FIRST = "first"  # the first refusal: say so, then wait
    WAIT = "wait"  # wait, and try again
    GIVE_UP = "give_up"  # waited ``bus_full_timeout``: BusFull


class FlushTimers:
    """When the flusher's jobs are due, from the times (monotonic seconds) it is given.

    running_ttl: the scan's keys are renewed every quarter of it.
    bus_full_timeout: how long a server at its memory cap may refuse flushes.
    heartbeat_s: how long an idle connection goes unchecked.
    every_s: how often the memory guard runs and the readers are counted while data flows.
    """

    def __init__(
        self,
        policy: FlushPolicy,
        now: float,
        *,
        running_ttl: float,
        bus_full_timeout: float,
        heartbeat_s: float = HEARTBEAT_S,
        every_s: float = 1.0,
    ) -> None:
        self.policy = policy
        self.running_ttl = running_ttl
        self.bus_full_timeout = bus_full_timeout
        self.heartbeat_s = heartbeat_s
        self.every_s = every_s
        self._next: dict[Job, float] = {
            Job.REFRESH: now + running_ttl / 4,
            Job.HEARTBEAT: now + heartbeat_s,
            Job.GUARD: 0.0,
            Job.COUNT_READERS: 0.0,
        }
        #: Readers seen waiting, the last few times they were counted (None: they cannot
        #: be); the flushes are paced by the most of them.
        self._readers: collections.deque[int] | None = collections.deque([0], maxlen=5)
        self.pace = 0.0
        self._last_flush = 0.0
        #: When the server first refused a flush for want of memory (None: it has room).
        self.full_since: float | None = None

    def _take(self, job: Job, now: float, every: float) -> bool:
        if now < self._next[job]:
            return False
        self._next[job] = now + every
        return True

    def with_flush(self, now: float) -> list[Job]:
        """The jobs due with a flush that starts at ``now`` (rescheduled as taken)."""
        jobs = []
        if self._take(Job.REFRESH, now, self.running_ttl / 4):
            jobs.append(Job.REFRESH)
        if self._take(Job.GUARD, now, self.every_s):
            jobs.append(Job.GUARD)
        if self._readers is not None and self._take(Job.COUNT_READERS, now, self.every_s):
            jobs.append(Job.COUNT_READERS)
        return jobs

    def when_idle(self, now: float) -> Job | None:
        """The job an idle flusher does at ``now``: renew the TTLs, or check the connection."""
        if self._take(Job.REFRESH, now, self.running_ttl / 4):
            return Job.REFRESH
        if now >= self._next[Job.HEARTBEAT]:
            return Job.HEARTBEAT
        return None

    def idle_wait(self, now: float) -> float:
        """How long an idle flusher may sleep before its next job."""
        return max(0.0, min(self._next[Job.REFRESH], self._next[Job.HEARTBEAT]) - now)

    def sent(self, now: float) -> None:
        """The server answered at ``now``: the connection needs no check for a while."""
        self._next[Job.HEARTBEAT] = now + self.heartbeat_s

    def readers_counted(self, readers: int | None) -> None:
        """``readers`` clients wait on the server (None: they cannot be counted; the
        flushes go unpaced from now on)."""
        if readers is None:
            self._readers = None
            self.pace = 0.0
            return
        if self._readers is not None:
            self._readers.append(readers)
            self.pace = self.policy.pace(max(self._readers))

    def flush_wait(self, now: float) -> float:
        """Seconds to wait before the next flush, for the pace (<= 0: flush now)."""
        return self._last_flush + self.pace - now

    def flushing(self, now: float) -> None:
        """A flush starts at ``now``."""
        self._last_flush = now

    def server_full(self, now: float) -> FullServer:
        """The server refused a flush at ``now`` for want of memory."""
        if self.full_since is None:
            self.full_since = now
            return FullServer.FIRST
        if now - self.full_since > self.bus_full_timeout:
            return FullServer.GIVE_UP
        return FullServer.WAIT

    def server_has_room(self, now: float) -> float | None:
        """A flush went through at ``now``: how long the server had been full, if it was."""
        if self.full_since is None:
            return None
        waited, self.full_since = now - self.full_since, None
        return waited
