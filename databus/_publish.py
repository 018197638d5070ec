"""The acquisition side: a ``Scan`` with its channels, publishing through a ``Sink``.

    scan = bus.session("demo").create_scan({"title": "ascan robz 0 1 10 0.1"})
    x = scan.channel("robz", "float64", unit="mm")
    img = scan.channel("det:image", "uint16", (1024, 1024))
    scan.prepare(); scan.start()
    x.send(0.5); img.send(frame)
    scan.end()          # flushes, seals every channel, gives the keys their retention TTL

``send()`` returns at once: points go to the scan's sink, whose background flusher writes
all channels in one pipelined round trip. ``end()`` waits until Redis has acknowledged
every accepted point, or raises ``FlushFailed`` naming those it has not.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ._batch import seal_commands
from ._config import env_var
from ._encoding import (
    MAX_REF_FRAMES,
    MAX_REF_INDEX,
    ChannelKind,
    Descriptor,
    FileRef,
    coerce,
    is_seal,
    pack_meta,
    pack_record,
    points_through,
)
from ._errors import (
    ChannelExists,
    ClosedError,
    DatabusError,
    DtypeError,
    FileRefError,
    FlushFailed,
    MetadataError,
    ScanStateError,
    ShapeError,
)
from ._flush_policy import FlushPolicy
from ._queue import ChannelQueue
from ._scan_info import identity
from ._sender import Transact
from ._sink import POOL_MIN_BYTES, Ending, Sink, SinkStatistics
from ._states import EndReason, ScanState, end_reason_for
from ._store import commands, keys
from ._store.commands import Command
from ._store.protocol import OutOfMemory

if TYPE_CHECKING:
    from ._bus import Session

log = logging.getLogger(__name__)

_live_scans: weakref.WeakSet[Scan] = weakref.WeakSet()

#: The highest scan number this process has created or restored, per (url, prefix, session).
_numbers: dict[tuple[str, str, str], int] = {}
_numbers_lock = threading.Lock()


def _known_number(session: Session, number: int | None = None) -> int:
    """The highest scan number this process knows of in ``session`` (raised to ``number``)."""
    where = (session.bus.url, session.bus.settings.prefix, session.name)
    with _numbers_lock:
        if number is not None and number > _numbers.get(where, 0):
            _numbers[where] = number
        return _numbers.get(where, 0)


@atexit.register
def _flush_unended_scans() -> None:
    """At interpreter exit, flush what scans that were never ended had accepted."""
    for scan in list(_live_scans):
        if scan.state < ScanState.ENDED:
            log.warning("scan %s was never ended; flushing what it accepted", scan.key)
            try:
                scan._sink.close(timeout=10)
            except Exception as exc:
                log.error("scan %s: %s", scan.key, exc)


def _mutable(value: Any) -> bool:
    """False for an array whose memory is an immutable ``bytes`` object (``np.frombuffer``
    of a received message): nobody can change it later, so ``send()`` need not copy it."""
    if not isinstance(value, np.ndarray):
        return False
    base: Any = value
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return True
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return not isinstance(base, bytes)


def _check_size(packed: bytes, limit: int, what: str, setting: str) -> None:
    """Refuse ``packed`` (``what``: scan info, a record) if it is over ``limit`` bytes, the
    ``Settings`` field ``setting``, so one huge value cannot fill the server."""
    if len(packed) > limit:
        raise MetadataError(
            f"{what} is {len(packed)} bytes packed, over the limit of {limit} bytes "
            f"(Settings.{setting}, environment variable {env_var(setting)}): "
            f"store less, or raise the limit"
        )


def _guard(bus: Any) -> Any:
    """The memory guard's check for this bus's publishers (None if disabled); problems
    running it (an ACL without INFO, say) are logged and it stays off."""
    if not bus.settings.memory_guard:
        return None
    from ._memory import MemoryGuard

    guard = MemoryGuard(bus)

    def check(force: bool = False) -> None:
        try:
            guard.check(force)
        except DatabusError as exc:
            log.warning("memory guard unavailable (%s); the server's own cap still applies", exc)

    return check


def _with_room(check_memory: Callable[..., Any] | None, write: Callable[[], Any]) -> Any:
    """``write()``; if the server refuses it at its memory cap (nothing applied), once
    more after the memory guard (``check_memory``, forced) made room."""
    try:
        return write()
    except OutOfMemory:
        if check_memory is None:
            raise
        check_memory(force=True)
        return write()


class ChannelWriter:
    """One channel of a publishing scan. ``send()`` takes a point or a block of points."""

    def __init__(self, scan: Scan, desc: Descriptor, key: str, fast_limit: int, copy: bool):
        self.desc = desc
        self.key = key
        #: The channel's queue, which the scan's sink flushes.
        self.queue = ChannelQueue(desc, key, fast_limit)
        self._items = self.queue.items
        self.scan = scan
        self._sink = scan._sink
        self._copy = copy
        self._max_record = scan.bus.settings.max_record_bytes
        #: [first, stop) ranges of acknowledged points a restarted server lost.
        self.lost: list[tuple[int, int]] = []
        self._sealing = False  # seal() was called: send() refuses points
        fast = desc.kind == "array" and desc.shape == () and not desc.lossy
        #: Python type that takes the lock-free path (one float into a float64 channel:
        #: narrower float channels go through coerce(), which refuses overflows).
        self._fast_type: type | None = None
        if fast and desc.dtype is not None and desc.dtype == np.float64:
            self._fast_type = float
        elif fast and desc.dtype is not None and desc.dtype.kind == "b":
            self._fast_type = bool

    def __repr__(self) -> str:
        d = self.desc
        what = d.kind if d.kind == "json" else f"{d.kind} {d.dtype}{list(d.shape)}"
        return f"<ChannelWriter {d.name!r} {what} of {self.scan.key}>"

    @property
    def name(self) -> str:
        return self.desc.name

    def send(self, value: Any) -> None:
        """Publish one point, or a block of points of shape ``(n, *shape)``.

        Returns at once unless the scan's buffer is full (then it blocks, or a lossy
        channel drops its oldest points). Raises ``DtypeError``/``ShapeError`` for a value
        the channel cannot take, ``FileRefError`` for a reference ``FileRef.problem()``
        refuses, ``MetadataError`` for a record over ``Settings.max_record_bytes`` (the
        scan stays usable after each), ``ClosedError`` after ``end()``, ``FlushFailed``
        if an earlier flush failed.
        """
        if type(value) is self._fast_type:
            items = self._items
            if len(items) < self.queue.fast_limit:
                items.append(value)
                if self._sink.idle:
                    self._sink.wake()
                return
        self._send(value)

    def extend(self, values: Iterable[Any]) -> None:
        """Publish several points: records of a json channel, ``FileRef``s of a ref channel,
        or for an array channel anything that makes a block of shape ``(n, *shape)``."""
        desc = self.desc
        if desc.kind == "array":
            block = values if isinstance(values, np.ndarray) else np.asarray(list(values))
            if block.ndim != len(desc.shape) + 1 or block.shape[1:] != desc.shape:
                raise ShapeError(
                    f"channel {desc.name!r}: extend() takes a sequence of points of shape "
                    f"{desc.shape}, i.e. a block of shape ('n', {', '.join(map(str, desc.shape))}"
                    f"); got shape {block.shape}"
                )
            self._send(block)
        else:
            for value in values:
                self._send(value)

    def _send(self, value: Any) -> None:
        if self._sealing:
            raise ClosedError(
                f"channel {self.name!r} of {self.scan.key} is sealed: it takes no more points"
            )
        sink = self._sink
        sink.check()
        desc = self.desc
        if desc.kind == "json":
            packed = pack_record(value, desc.name)
            _check_size(
                packed, self._max_record, f"a record of channel {desc.name!r}", "max_record_bytes"
            )
            sink.put(self.queue, packed, len(packed))
            return
        if desc.kind == "ref":
            if not isinstance(value, FileRef):
                raise DtypeError(
                    f"channel {desc.name!r} takes file references: send "
                    f"FileRef(file, dataset, start, stop); got {type(value).__name__}"
                )
            problem = value.problem()
            if problem:
                raise FileRefError(
                    f"channel {desc.name!r} refuses this FileRef: {problem}; send "
                    f"FileRef('/absolute/file.h5', 'dataset', start, stop) with "
                    f"0 <= start < stop <= {MAX_REF_INDEX} and at most {MAX_REF_FRAMES} frames"
                )
            sink.put(self.queue, value, 0)
            return
        block = coerce(desc, value)
        if not len(block):
            return
        if self._copy and _mutable(value) and np.may_share_memory(block, value):
            big = len(block) == 1 and desc.point_nbytes >= POOL_MIN_BYTES
            block = self._sink.pool.copy(block) if big else block.copy()
        if desc.shape == () and len(block) == 1 and not desc.lossy:
            if len(self._items) >= self.queue.fast_limit:
                sink.wait_room(self.queue)
            self._items.append(block[0].item())
            if sink.idle:
                sink.wake()
            return
        sink.put(self.queue, block, block.nbytes)

    def __len__(self) -> int:
        """Points accepted so far (acknowledged, queued or dropped)."""
        return self.queue.accepted

    def skip(self, count: int) -> None:
        """Announce that the next ``count`` points will never come (the producer lost
        them): readers get a ``dropped`` GAP there, the end info counts them as dropped,
        and the next point sent follows them. ``ClosedError`` once sealed."""
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"channel {self.name!r}: skip() takes a count >= 1, not {count!r}")
        if self._sealing:
            raise ClosedError(
                f"channel {self.name!r} of {self.scan.key} is sealed: it takes no more points"
            )
        self._sink.lose(self.queue, count)

    @property
    def sealed(self) -> bool:
        """The channel's seal is written: readers know it has all its points."""
        return self.queue.sealed or self.scan.state is ScanState.ENDED

    def flush(self) -> None:
        """Block until the server acknowledged every point sent so far (``FlushFailed``
        if the flusher failed)."""
        self._sink.flush(self.queue)

    def seal(self) -> int:
        """Flush this channel's points and write its seal, so readers know it is complete
        while the scan goes on; blocks until the server acknowledged it. Returns the
        channel's number of points. A ``send()`` afterwards raises ``ClosedError``;
        ``Scan.end()`` leaves the channel as it is; sealing again changes nothing."""
        if not self.sealed:
            self._sealing = True
            self._sink.seal(self.queue)
        return self.queue.head


class Scan:
    """A scan being published. Made by ``Session.create_scan()``; ends with ``end()`` or
    at the end of a ``with`` block (an exception ends it as failed/interrupted, with the
    error text in its record)."""

    def __init__(self, session: Session, number: int, info: dict[str, Any], created: float) -> None:
        self.session = session
        self.bus = session.bus
        self.number = number
        self.key = keys.scan(self.bus.settings.prefix, session.name, number)
        self.created = created
        self._info = dict(info)
        self.state = ScanState.CREATED
        self.end_reason: EndReason | None = None
        #: ``seal()`` recorded that every channel is sealed.
        self.sealed = False
        self.channels: dict[str, ChannelWriter] = {}
        settings = self.bus.settings
        self._sink = Sink(
            self.bus.wire_of_own(),
            self.bus.runner,
            policy=FlushPolicy(max_buffer_bytes=settings.buffer_bytes),
            running_ttl=settings.running_ttl,
            refresh_keys=self._keys,
            pool=self.bus.buffer_pool,
            guard=_guard(self.bus),
            restore=self._restore,
            revive=self.bus.revive_server,
            bus_full_timeout=settings.bus_full_timeout,
            reconnect_timeout=settings.reconnect_timeout,
            name=f"databus-sink-{session.name}-{number}",
        )
        _live_scans.add(self)

    @classmethod
    def create(cls, session: Session, info: dict[str, Any]) -> Scan:
        """Number a new scan atomically and write its record and log entries; its info gets
        the keys that name it (``_scan_info.identity``) unless it has them (a blissdata 2.x
        writer gives its own scan number)."""
        bus = session.bus
        packed_info = pack_meta(info, what="scan info")
        _check_size(packed_info, bus.settings.max_info_bytes, "scan info", "max_info_bytes")
        now = time.time()
        check_memory = _guard(bus)
        settings = bus.settings
        counter = commands.next_number(settings.prefix, session.name, _known_number(session))
        number = int(_with_room(check_memory, lambda: bus.wire.call(*counter)))
        _known_number(session, number)
        key = keys.scan(settings.prefix, session.name, number)
        info = {**identity(session.name, number, key), **info}
        packed_info = pack_meta(info, what="scan info")
        creation = commands.create_scan(
            settings.prefix,
            session.name,
            number,
            packed_info,
            now,
            time.time(),
            running_ttl=settings.running_ttl,
            retention_ttl=settings.retention_ttl,
            feed_length=settings.feed_length,
        )
        _with_room(check_memory, lambda: bus.wire.run(creation, atomic=True))
        if check_memory is not None:
            check_memory()  # after the scan is announced: readers do not wait for it
        return cls(session, number, info, now)

    def __repr__(self) -> str:
        reason = f" ({self.end_reason.value})" if self.end_reason else ""
        return f"<Scan {self.key} {self.state.name}{reason} channels={len(self.channels)}>"

    # --------------------------------------------------------------- channels

    def channel(
        self,
        name: str,
        dtype: Any = None,
        shape: Iterable[int] = (),
        *,
        unit: str | None = None,
        kind: ChannelKind = "array",
        lossy: bool = False,
        copy: bool = True,
        attrs: dict[str, Any] | None = None,
    ) -> ChannelWriter:
        """Declare a channel of points of ``dtype`` and ``shape`` (``()`` for scalars).

        kind: ``array`` (numeric points stored inline), ``json`` (one JSON-like record per
            point; no dtype) or ``ref`` (frames of dtype/shape that a detector wrote to its
            own file: send ``FileRef``s).
        lossy: when the scan's buffer is full, drop this channel's oldest points (counted
            in the scan record) instead of blocking ``send()``.
        copy: False lets ``send()`` keep a reference to the arrays it gets instead of
            copying them; the caller must then not modify an array after sending it.
        attrs: extra JSON-like metadata stored in the descriptor.

        A channel may be declared until the scan is sealed or ended, also while it runs
        (a bluesky stream declared mid-run): readers get its NEW_NODE before its first
        point, and a writer adds it to what it writes. Declare what you can before
        ``prepare()``, so readers know the scan's shape from the start.

        Raises ``InvalidName`` for a name ``keys.check_name`` refuses (empty, over
        ``keys.MAX_CHANNEL_NAME`` characters, control characters), ``ChannelExists`` for a
        second channel of the same name, ``ScanStateError`` once the scan is sealed or
        has ended.
        """
        if self.state is ScanState.ENDED or self.sealed:
            raise ScanStateError(
                f"cannot add channel {name!r}: scan {self.key} is "
                f"{'ENDED' if self.state is ScanState.ENDED else 'sealed'}; "
                f"declare channels before seal() and end()"
            )
        if dtype is None and kind == "array":
            raise DtypeError(f"channel {name!r}: give a dtype (e.g. 'float64'), or kind='json'")
        desc = Descriptor.create(
            name, dtype, tuple(shape), unit=unit, kind=kind, lossy=lossy, attrs=attrs
        )
        if name in self.channels:
            raise ChannelExists(f"scan {self.key} already has a channel {name!r}")
        ckey = keys.channel(self.key, name)
        self.bus.wire.run(commands.declare_channel(self.key, name, desc.to_meta()), atomic=True)
        writer = ChannelWriter(self, desc, ckey, self.bus.settings.scalar_queue, copy)
        self._sink.add(writer.queue)
        self.channels[name] = writer
        return writer

    def _restore(self, transact: Transact) -> None:
        """After a reconnection, on the sink's link (``transact``): if the server lost this
        scan's record (it restarted without its data), write it and the log entries again;
        for each channel whose stream holds fewer points than the server had acknowledged,
        write a gap marker over the lost ones and note them in the record and the scan log,
        so no reader misses them silently; a sealed channel whose seal is gone is sealed
        again."""
        writers = list(self.channels.values())
        has_record, *lasts = transact(commands.restore_probe(self.key, [w.key for w in writers]))
        lost = {}
        unsealed = []
        for w, last in zip(writers, lasts, strict=True):
            stored = _points_stored(w.desc, last)
            if stored < w.queue.acked_end:
                lost[w] = (stored, w.queue.acked_end)
            if w.queue.sealed and not (last and is_seal(last[0][0])):
                unsealed.append(w)
        if has_record and not lost and not unsealed:
            return
        settings = self.bus.settings
        repair: list[Command] = [] if has_record else _rebuild(self)
        for w, (first, stop) in lost.items():
            ranges = pack_meta([*w.lost, (first, stop)])
            repair += commands.lost_points(
                self.key, w.name, w.key, first, stop, ranges, settings.running_ttl
            )
        for w in unsealed:
            repair += [
                commands.seal(w.key, w.queue.head),
                commands.pexpire(w.key, settings.running_ttl),
            ]
        transact(repair)
        for w, (first, stop) in lost.items():
            w.lost.append((first, stop))  # once written: a retry after a failure adds it once
            log.error(
                "scan %s channel %r: the server restarted without points %d..%d it had "
                "acknowledged; marked as a gap",
                self.key,
                w.name,
                first,
                stop - 1,
            )

    def _keys(self) -> list[str]:
        """Every key of this scan."""
        return [
            self.key,
            keys.scan_log(self.key),
            keys.scan_control(self.key),
            *(c.key for c in self.channels.values()),
        ]

    # ------------------------------------------------------------------- info

    @property
    def info(self) -> dict[str, Any]:
        """A copy of the scan info as last written."""
        return dict(self._info)

    def update_info(self, fields: dict[str, Any] | None = None, **more: Any) -> None:
        """Merge ``fields`` into the scan info and store it; allowed until the scan ends."""
        self._check_not_ended("update its info")
        info = {**self._info, **(fields or {}), **more}
        packed = pack_meta(info, what="scan info")
        _check_size(packed, self.bus.settings.max_info_bytes, "scan info", "max_info_bytes")
        self.bus.wire.run(commands.update_info(self.key, packed), atomic=True)
        self._info = info

    # -------------------------------------------------------------- lifecycle

    def _check_not_ended(self, action: str) -> None:
        if self.state is ScanState.ENDED:
            raise ScanStateError(f"cannot {action}: scan {self.key} has ended")

    def _move(self, new: ScanState) -> None:
        self.state.check_move(new)
        moved = commands.move_state(
            self.bus.settings.prefix, self.session.name, self.key, self.number, new, time.time()
        )
        self.bus.wire.run(moved, atomic=True)
        self.state = new

    def prepare(self) -> None:
        """Mark the scan prepared: every channel is declared, data may follow."""
        self._move(ScanState.PREPARED)

    def start(self) -> None:
        """Mark the scan started."""
        self._move(ScanState.STARTED)

    def seal(self) -> None:
        """Seal every channel (flushing its points) and record that the scan's data is
        complete (``ScanNode.sealed``, a ``sealed`` scan-log entry): readers know it
        before the final info and the end come. ``ScanStateError`` once sealed or ended."""
        self._check_not_ended("seal it")
        if self.sealed:
            raise ScanStateError(f"scan {self.key} is already sealed")
        writers = [w for w in self.channels.values() if not w.sealed]
        for w in writers:
            w._sealing = True
        self._sink.seal(*(w.queue for w in writers))
        self.bus.wire.run(commands.seal_scan(self.key, time.time()), atomic=True)
        self.sealed = True

    def end(
        self,
        reason: str | EndReason = "finished",
        error: str | None = None,
        *,
        info: dict[str, Any] | None = None,
    ) -> None:
        """Flush every accepted point, seal every channel, record ``reason`` (finished,
        stopped, aborted, failed, interrupted) and ``error`` text, and give all keys the
        retention TTL. ``info`` is merged into the scan info in the end's own transaction,
        so readers see the final info (end time...) with the end, never before it. Blocks
        until Redis has acknowledged everything; raises ``FlushFailed`` (after recording
        the scan as failed) if it could not."""
        end_reason = EndReason.given(reason)
        self._check_not_ended("end it again")
        final = {**self._info, **info} if info is not None else None
        packed = None if final is None else pack_meta(final, what="scan info")
        if packed is not None:
            _check_size(packed, self.bus.settings.max_info_bytes, "scan info", "max_info_bytes")
        failure: FlushFailed | None = None
        try:
            self._sink.close(ending=_ending(self, end_reason, error, packed))
        except FlushFailed as exc:
            failure = exc
        _live_scans.discard(self)
        if self._sink.ended:
            self._info = final if final is not None else self._info
            self.state = ScanState.ENDED
            self.end_reason = EndReason.FAILED if failure is not None else end_reason
        if failure is not None:
            raise failure

    def __enter__(self) -> Scan:
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: object) -> None:
        if self.state is ScanState.ENDED:
            return
        error = None if exc is None else f"{type(exc).__name__}: {exc}"
        self.end(end_reason_for(exc), error=error)

    def statistics(self) -> SinkStatistics:
        """Counters of the scan's sink (buffered bytes, flushes, dropped points...)."""
        return self._sink.statistics()


def _rebuild(scan: Scan) -> list[Command]:
    """The commands that write ``scan``'s record and log entries again."""
    log.error("scan %s: the server lost its record (restarted empty?); writing it again", scan.key)
    _known_number(scan.session, scan.number)
    settings = scan.bus.settings
    sealed = commands.seal_scan(scan.key, time.time()) if scan.sealed else []
    return [
        *commands.restore_scan(
            settings.prefix,
            scan.session.name,
            scan.key,
            scan.number,
            pack_meta(scan.info),
            scan.created,
            {name: w.desc.to_meta() for name, w in scan.channels.items()},
            scan.state,
            time.time(),
            running_ttl=settings.running_ttl,
            retention_ttl=settings.retention_ttl,
            feed_length=settings.feed_length,
        ),
        *sealed,
    ]


def _ending(scan: Scan, reason: EndReason, error: str | None, info: bytes | None) -> Ending:
    """What the sink sends last, once every accepted point is acknowledged: the
    trailing points lossy channels dropped and the seal of each channel not sealed yet,
    the final scan info (packed) if given, and ``scan``'s end (as failed, with the
    failure's text, if the sink failed)."""

    def ending(failure: FlushFailed | None) -> list[Command]:
        why, text = (EndReason.FAILED, str(failure)) if failure is not None else (reason, error)
        settings = scan.bus.settings
        end = [
            c for w in scan.channels.values() if not w.queue.sealed for c in seal_commands(w.queue)
        ]
        if info is not None:
            end += commands.update_info(scan.key, info)
        return end + commands.end_scan(
            settings.prefix,
            scan.session.name,
            scan.key,
            scan.number,
            why,
            time.time(),
            text,
            {w.name: w.queue.dropped for w in scan.channels.values() if w.queue.dropped},
            scan._keys(),
            settings.retention_ttl,
        )

    return ending


def _points_stored(desc: Descriptor, last: list[Any]) -> int:
    """How many points a stream vouches for, from XREVRANGE's raw reply for its last entry
    ([[id, [field, value, ...]]], or [] for an empty stream)."""
    if not last:
        return 0
    entry_id, flat = last[0]
    return points_through(desc, entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))
