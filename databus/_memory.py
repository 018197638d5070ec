"""Keeping the server under its memory cap by deleting the oldest *ended* scans, whole.

The server runs with ``maxmemory`` and ``noeviction``: it refuses writes past the cap
rather than dropping keys at random. ``MemoryGuard.check()`` reads ``used_memory``; past
``high`` x cap it deletes ended scans, oldest first (from the ``P:scans`` index), every key
of each, and notes ``evicted`` in their session's log, until usage is under ``low`` x cap.
A running scan is never touched; each primary of a cluster is guarded on its own. The
publisher runs the guard when it creates a scan, about once a second while it flushes, and
whenever the server answers OOM; ``databus memory-guard`` runs it in a loop for servers no
databus publisher writes to.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from ._encoding import Descriptor, pack_meta, points_through
from ._errors import CorruptEntry, DatabusError
from ._states import ScanState
from ._store import commands, keys
from ._store.protocol import OutOfMemory
from ._store.schema import evicted_entry, message, raw_descriptors, recorded_end, scan_state

if TYPE_CHECKING:
    from ._bus import Bus

log = logging.getLogger(__name__)

#: The longest a forced check waits for the server to free what was deleted (seconds).
LAZYFREE_WAIT_S = 1.0


@dataclasses.dataclass(frozen=True)
class GuardReport:
    """What one check did: memory before and after (bytes), the cap, scans deleted."""

    used_before: int
    used_after: int
    cap: int
    evicted: tuple[str, ...]


class MemoryGuard:
    """Deletes ended scans, oldest first, when the server's memory passes ``high`` x cap,
    until it is under ``low`` x cap. ``cap`` None reads the server's ``maxmemory``. On a
    cluster each primary is a server of its own: the guard reads each one's memory and
    deletes, on a shard that is full, the ended scans that shard holds."""

    def __init__(
        self, bus: Bus, cap: int | None = None, high: float = 0.85, low: float = 0.7
    ) -> None:
        if not 0 < low < high <= 1:
            raise ValueError(f"need 0 < low < high <= 1, got low={low}, high={high}")
        self.bus, self.high, self.low = bus, high, low
        self._cap = cap
        self._caps: dict[str, int] = {}
        #: Evicted scans whose session-log note the server had no room for yet.
        self._unnoted: list[tuple[str, dict[str, Any]]] = []

    def cap(self) -> int:
        """The memory cap in bytes (the servers' ``maxmemory`` summed, unless given)."""
        return sum(self._node_cap(node) for node in self.bus.wire.nodes())

    def used(self) -> int:
        """The servers' ``used_memory`` in bytes (summed over a cluster's primaries)."""
        return sum(self._memory(node)[0] for node in self.bus.wire.nodes())

    def _node_cap(self, node: str) -> int:
        if self._cap is not None:
            return self._cap
        if node not in self._caps:
            self._memory(node)
        return self._caps[node]

    def _memory(self, node: str) -> tuple[int, int]:
        """(used_memory, lazyfree_pending_objects) of ``node``: keys deleted and not yet
        freed by the server's background thread still count as used."""
        info = self.bus.wire.on_node(node, *commands.memory())
        if node not in self._caps:  # the same INFO gives the cap: no second round trip
            self._caps[node] = int(info.get("maxmemory", 0) or 0)
        return int(info["used_memory"]), int(info.get("lazyfree_pending_objects", 0))

    def _settled(self, node: str) -> tuple[int, int]:
        """``_memory(node)`` once its background frees are done (up to ``LAZYFREE_WAIT_S``)."""
        deadline = time.monotonic() + LAZYFREE_WAIT_S
        while True:
            used, freeing = self._memory(node)
            if not freeing or time.monotonic() > deadline:
                return used, freeing
            time.sleep(0.002)

    def check(self, force: bool = False) -> GuardReport:
        """Evict ended scans if memory is past the high-water mark, or with ``force``
        (the server has just refused a write: a large pipeline counts toward its memory
        while it is queued, so usage read afterwards can look lower than it was; on a
        cluster, ``force`` applies to the shards past the low-water mark).

        While the server is still freeing what was deleted, usage overstates: a routine
        check then waits for the next one (it runs in the publisher's flusher, which must
        not stall); a forced one waits for the frees, as its publisher is blocked anyway."""
        nodes = self.bus.wire.nodes()
        reports = [self._check(node, force, len(nodes) > 1) for node in nodes]
        return GuardReport(
            sum(r.used_before for r in reports),
            sum(r.used_after for r in reports),
            sum(r.cap for r in reports),
            tuple(key for r in reports for key in r.evicted),
        )

    def _check(self, node: str, force: bool, shards: bool) -> GuardReport:
        """``check`` on one server (``shards``: one primary of several)."""
        used, freeing = self._settled(node) if force else self._memory(node)
        cap = self._node_cap(node)
        before = used
        if force and shards:
            force = used > self.low * cap
        evicted: list[str] = []
        if cap and not freeing and (force or used > self.high * cap):
            for key in self._ended_scans_oldest_first(node if shards else None):
                self._evict(key)
                evicted.append(key)
                used, freeing = self._settled(node) if force else self._memory(node)
                if freeing or used < self.low * cap:
                    break
            if used > self.high * cap and not evicted:
                log.warning(
                    "memory of %s %.0f MB of %.0f MB cap, and no ended scan is left to "
                    "delete there: the running scans fill it",
                    node,
                    used / 1e6,
                    cap / 1e6,
                )
        if evicted:
            log.warning(
                "memory of %s was %.0f MB of %.0f MB: deleted %d ended scans (%s), now %.0f MB%s",
                node,
                before / 1e6,
                cap / 1e6,
                len(evicted),
                ", ".join(evicted),
                used / 1e6,
                " (the server is still freeing them)" if freeing else "",
            )
        return GuardReport(before, used, cap, tuple(evicted))

    def _ended_scans_oldest_first(self, node: str | None) -> list[str]:
        """Ended scans (held by primary ``node``, if given), oldest first; those a file
        writer has started and not finished (its ``file`` in the record, no ``written``
        yet) come last, so a writer that lags loses a scan only when nothing else is left
        to delete. A scan whose state cannot be read is kept, with a warning: it may be
        running."""
        prefix = self.bus.settings.prefix
        scan_keys: list[Any] = self.bus.wire.call(*commands.scans(prefix))
        names = [message(k) or "" for k in scan_keys]
        if node is not None:
            names = [key for key in names if self.bus.wire.node_of(key) == node]
        records = self.bus.wire.run_each([commands.writer_marks(key) for key in names])
        ended = [
            (key, record[1] is not None and record[2] is None)
            for key, record in zip(names, records, strict=True)
            if _ended(key, record)
        ]
        return [key for key, _ in sorted(ended, key=lambda item: item[1])]

    def _evict(self, key: str) -> None:
        """Delete every key of the ended scan ``key`` and note it in its session log, with
        how it ended and each channel's total and descriptor, so a walk still reading it
        can report what it will never read (``GAP`` events, reason ``evicted``)."""
        number = keys.parse_scan(key)[2]
        record = self.bus.wire.call(*commands.record(key))
        descs = raw_descriptors(record)
        last = [commands.entries_back(keys.channel(key, name)) for name in descs]
        channels = {
            name: [_total(raw, entries), raw]
            for (name, raw), entries in zip(descs.items(), self.bus.wire.run(last), strict=True)
        }
        reason, error = recorded_end(record)
        entry = evicted_entry(key, number, time.time(), reason, error, pack_meta(channels))
        try:
            self.bus.wire.run(commands.evict(key, descs, entry), atomic=True)
        except OutOfMemory:
            # Over its cap the server refuses a whole transaction holding a command that
            # needs memory (the note): free the memory first, note it once there is room.
            self.bus.wire.run(commands.evict_keys(key, descs), atomic=True)
            self._unnoted.append((key, entry))
        self._note_evicted()

    def _note_evicted(self) -> None:
        """Write, oldest first, the session-log notes of scans deleted while the server
        was over its cap, as far as it has room for them now."""
        while self._unnoted:
            key, entry = self._unnoted[0]
            self._settled(self.bus.wire.node_of(keys.session_log(*keys.parse_scan(key)[:2])))
            try:
                self.bus.wire.call(*commands.evict_note(key, entry))
            except OutOfMemory:
                return
            self._unnoted.pop(0)


def _ended(key: str, record: Any) -> bool:
    """True if ``record`` (state, file, written of scan ``key``) says the scan has ended."""
    if isinstance(record, Exception):  # not a scan record (another type at that key)
        log.warning("memory guard: %s is not a scan record (%s); not deleting it", key, record)
        return False
    try:
        return scan_state(key, record[0]) is ScanState.ENDED
    except CorruptEntry as exc:
        log.warning("memory guard: not deleting %s: %s", key, exc)
        return False


def _total(descriptor: bytes, last: list) -> int:
    """Points a channel's stream accounts for, from its last entry (None: no entry)."""
    if not last:
        return 0
    try:
        return points_through(Descriptor.from_meta(descriptor), last[0][0], last[0][1])
    except Exception as exc:  # a corrupt descriptor or entry: report what is known
        log.warning("memory guard: cannot count a channel's points: %s", exc)
        return 0


def main(argv: list[str] | None = None) -> int:
    """``databus memory-guard``: keep a server under its cap, checking every interval."""
    import argparse

    from ._bus import connect

    parser = argparse.ArgumentParser(
        prog="databus memory-guard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--url", default=None)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    parser.add_argument(
        "--high", type=float, default=0.85, help="fraction of the cap that triggers"
    )
    parser.add_argument(
        "--low", type=float, default=0.7, help="fraction of the cap to get back under"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        bus = connect(args.url)
        guard = MemoryGuard(bus, high=args.high, low=args.low)
        log.info(
            "guarding %r: cap %.0f MB, high %.0f%%, low %.0f%%",
            bus,
            guard.cap() / 1e6,
            100 * args.high,
            100 * args.low,
        )
        while True:
            guard.check()
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    except DatabusError as exc:
        print(f"databus memory-guard: {exc}", file=sys.stderr)
        return 2
