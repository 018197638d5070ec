"""blissdata 2.x's ``Scan`` and ``ScanState`` over a databus scan.

A ``Scan`` loaded by ``DataStore.load_scan`` reads a ``databus.ScanNode``; one made by
``DataStore.create_scan`` publishes through a ``databus.Scan`` (``session.create_scan``).
States map onto ours: CREATED, PREPARED and STARTED are the same; STOPPED is a scan whose
channels are all sealed (its data complete, ``ScanNode.sealed``), CLOSED one that ended
with its final info. ``info["end_reason"]`` is in BLISS's words (``END_REASONS``); ours is
``scan.node.end_reason``.
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING, Any

from ..._errors import CorruptEntry, ReadTimeout, UnknownScan
from ..._publish import Scan as PublishedScan
from ..._states import EndReason
from ..._states import ScanState as OurState
from ..._subscribe import ScanNode
from ...scan import current_session
from ..exceptions import (
    NoWritePermission,
    ScanNotFoundError,
    ScanValidationError,
    UnauthorizeStateTransition,
)
from ..streams import BaseStream, StreamDefinition
from ..streams.default import stream_of
from .identities import identity_field, identity_info

if TYPE_CHECKING:
    from .store import DataStore

__all__ = ["END_REASONS", "Scan", "ScanState"]


class ScanState(enum.IntEnum):
    """A scan only moves to a higher state, so "at least PREPARED" is one comparison."""

    CREATED = 0
    PREPARED = 1
    STARTED = 2
    STOPPED = 3
    CLOSED = 4


#: The scan-info key where BLISS puts how a scan ended (a word of ``END_REASONS``).
END_REASON_KEY = "end_reason"
#: Our end reason -> BLISS's ``end_reason``. BLISS says SUCCESS for a scan that ran to
#: its end or that a watchdog's StopIteration stopped cleanly (our ``stopped``),
#: USER_ABORT for Ctrl-C (``interrupted``) and FAILURE for any exception (``failed``, and
#: ``aborted``: a hook raised); a scan whose publisher died (``lost``) never closed
#: cleanly: FAILURE. DELETION is what a writer that deletes its scan sets itself.
END_REASONS = {
    EndReason.FINISHED: "SUCCESS",
    EndReason.STOPPED: "SUCCESS",
    EndReason.ABORTED: "FAILURE",
    EndReason.FAILED: "FAILURE",
    EndReason.INTERRUPTED: "USER_ABORT",
    EndReason.LOST: "FAILURE",
}
#: BLISS's ``end_reason`` set by a 2.x writer -> the end reason we record.
_OUR_REASONS = {
    "SUCCESS": EndReason.FINISHED,
    "FAILURE": EndReason.FAILED,
    "USER_ABORT": EndReason.INTERRUPTED,
    "DELETION": EndReason.ABORTED,
}


def state_of(node: ScanNode) -> ScanState:
    """The blissdata state of ``node`` as last read."""
    if node.state is OurState.ENDED:
        return ScanState.CLOSED
    if node.sealed is not None:
        return ScanState.STOPPED
    return ScanState(int(node.state))


def info_of(node: ScanNode) -> dict[str, Any]:
    """``node``'s scan info with ``end_reason`` in BLISS's words once it has ended (a
    writer's own BLISS word kept)."""
    info = dict(node.info)
    if node.state is OurState.ENDED and info.get(END_REASON_KEY) not in _OUR_REASONS:
        reason = node.end_reason
        info[END_REASON_KEY] = END_REASONS.get(reason, "FAILURE")  # type: ignore[call-overload]
    return info


class Scan:
    """One scan, for reading (``DataStore.load_scan``) or writing (``create_scan``).

    Identity fields (``session``, ``name``, ``number``, ``data_policy``, ``proposal``,
    ``collection``, ``dataset``, ``path``) come from the scan info (see ``identities``);
    ``session`` is the databus session and ``number`` falls back on the bus's number.
    ``node`` is the databus ``ScanNode`` below (a writer's once prepared).
    """

    def __init__(self, store: DataStore, node: ScanNode | None, writer: PublishedScan | None):
        self._store = store
        self.node = node
        self._writer = writer
        self._streams: dict[str, BaseStream] = {}
        self._state = ScanState.CREATED
        self._info: dict[str, Any] = {}
        self._identity: dict[str, Any] = {}
        if node is not None:
            self._state = state_of(node)
            self._info = info_of(node)
            self._refresh_streams()

    # ------------------------------------------------------------------ loading

    @classmethod
    def _load(cls, store: DataStore, key: str) -> Scan:
        try:
            return cls(store, store.bus.scan(key), None)
        except UnknownScan as exc:
            raise ScanNotFoundError(str(exc)) from exc
        except CorruptEntry as exc:
            raise ScanValidationError(f"scan {key} exists but its record is invalid") from exc

    @classmethod
    def _create(cls, store: DataStore, identity: dict[str, Any], info: dict[str, Any]) -> Scan:
        carried = identity_info(identity)
        session = store.bus.session(identity.get("session") or current_session())
        scan = cls(store, None, session.create_scan({**info, **carried}))
        scan._identity = carried
        scan._state = ScanState.CREATED
        scan._info = {**info, **carried}
        return scan

    # ---------------------------------------------------------------- reading

    def __repr__(self) -> str:
        return f'{type(self).__name__}(key:"{self.key}")'

    @property
    def key(self) -> str:
        return self._writer.key if self._writer is not None else self._node.key

    @property
    def _node(self) -> ScanNode:
        if self.node is None:
            self.node = self._store.bus.scan(self.key)
        return self.node

    def _identity_field(self, field: str) -> Any:
        return identity_field(self._info, field)

    @property
    def session(self) -> str:
        if self._writer is not None:
            return self._writer.session.name
        return self._node.parent.name  # type: ignore[union-attr]

    @property
    def name(self) -> str:
        return self._identity_field("name") or self._info.get("type", "scan")

    @property
    def number(self) -> int:
        number = self._identity_field("number")
        if number is not None:
            return int(number)
        return self._writer.number if self._writer is not None else self._node.number

    @property
    def data_policy(self) -> str | None:
        return self._identity_field("data_policy")

    @property
    def proposal(self) -> str | None:
        return self._identity_field("proposal")

    @property
    def collection(self) -> str | None:
        return self._identity_field("collection")

    @property
    def dataset(self) -> str | None:
        return self._identity_field("dataset")

    @property
    def path(self) -> str | None:
        return self._identity_field("path")

    @property
    def info(self) -> dict[str, Any]:
        """The scan info (a writer's own dict, published at each state change)."""
        return self._info

    @info.setter
    def info(self, info: dict[str, Any]) -> None:
        self._check_writer("set the scan info")
        self._info = {**info, **self._identity}

    @property
    def state(self) -> ScanState:
        return self._state

    @property
    def streams(self) -> dict[str, BaseStream]:
        """The scan's streams by name, once PREPARED (empty before)."""
        return dict(self._streams) if self._state >= ScanState.PREPARED else {}

    def _refresh_streams(self) -> None:
        if self._state < ScanState.PREPARED or self._writer is not None:
            return
        for name, channel in self._node.channels.items():
            if name not in self._streams:
                self._streams[name] = stream_of(channel, None)

    def update(self, block: bool = True, timeout: float = 0) -> bool:
        """Read the scan's state again; True if it changed. ``block`` waits for the next
        change (``timeout`` seconds, 0: for ever), reading the scan's log through the SDK
        (``ScanNode.wait_change``); a CLOSED scan returns False at once.
        ``ScanNotFoundError`` if the scan is gone."""
        if self._writer is not None:
            raise NoWritePermission(f"scan {self.key} is being written here: nothing to update")
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds (0: wait for ever), not {timeout}")
        node = self._node
        before = self._state
        if before is ScanState.CLOSED:
            return False
        deadline = None if timeout == 0 else time.monotonic() + timeout
        try:
            mark = node.wait_change()
            while block and state_of(node) == before:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    mark = node.wait_change(mark, remaining)
                except ReadTimeout:
                    break
        except UnknownScan as exc:
            raise ScanNotFoundError(str(exc)) from exc
        self._state = state_of(node)
        self._info = info_of(node)
        self._refresh_streams()
        return self._state != before

    # ----------------------------------------------------------------- writing

    def _check_writer(self, action: str) -> PublishedScan:
        if self._writer is None:
            raise NoWritePermission(f"Scan {self.key} is read-only: cannot {action}")
        return self._writer

    def create_stream(self, stream_definition: StreamDefinition) -> BaseStream:
        """Declare a stream (a databus channel) before ``prepare()``."""
        writer = self._check_writer("create a stream")
        d = stream_definition
        channel = writer.channel(d.name, d.dtype, d.shape, kind=d.kind, attrs=d.info)
        stream = stream_of(None, channel)
        self._streams[d.name] = stream
        return stream

    def _publish_info(self) -> None:
        """Store the scan info as it is now: at every state change, as blissdata does (a
        writer may have changed it in place, nested values included)."""
        self._check_writer("publish the scan info").update_info(self._info)

    def _move(self, expected: ScanState, new: ScanState) -> PublishedScan:
        writer = self._check_writer(f"move it to {new.name}")
        if self._state is not expected:
            raise UnauthorizeStateTransition(self._state, new)
        self._publish_info()
        return writer

    def prepare(self) -> None:
        self._move(ScanState.CREATED, ScanState.PREPARED).prepare()
        self._state = ScanState.PREPARED

    def start(self) -> None:
        self._move(ScanState.PREPARED, ScanState.STARTED).start()
        self._state = ScanState.STARTED

    def stop(self) -> None:
        """Seal every stream: the data is complete (STOPPED); the final info may follow."""
        self._move(ScanState.STARTED, ScanState.STOPPED).seal()
        self._state = ScanState.STOPPED

    def close(self) -> None:
        """End the scan (sealing streams not sealed yet) with the info as it is now;
        ``info["end_reason"]`` (SUCCESS, FAILURE, USER_ABORT, DELETION) sets our end
        reason (none given: finished)."""
        writer = self._check_writer("close it")
        reason = _OUR_REASONS.get(self._info.get(END_REASON_KEY, "SUCCESS"), EndReason.FINISHED)
        writer.end(reason, info=self._info)
        self._state = ScanState.CLOSED
