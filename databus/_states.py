"""The scan lifecycle: ordered states, end reasons, and the one map from an exception to an
end reason. Shared by the publisher, the readers and the scan runner (``databus.scan``)."""

from __future__ import annotations

import enum

from ._errors import ScanStateError


class ScanState(enum.IntEnum):
    """A scan only ever moves to a higher state, so "at least PREPARED" is one comparison.

    CREATED -> PREPARED -> STARTED -> ENDED; PREPARED and STARTED may be skipped, ENDED
    may be reached from any state and is final.
    """

    CREATED = 0
    PREPARED = 1
    STARTED = 2
    ENDED = 3

    def check_move(self, new: ScanState) -> None:
        """Raise ``ScanStateError`` unless moving from this state to ``new`` is allowed."""
        if new <= self:
            raise ScanStateError(
                f"a scan in state {self.name} cannot move to {new.name} "
                f"(states only move forward: CREATED, PREPARED, STARTED, ENDED)"
            )


class EndReason(str, enum.Enum):
    """Why a scan ended; stored in its record and carried by END_SCAN."""

    FINISHED = "finished"  # ran to completion
    STOPPED = "stopped"  # asked to stop (a hook, a user); data kept and sealed
    ABORTED = "aborted"  # stopped by an error outside the scan's own code (a hook raised)
    FAILED = "failed"  # the acquisition code raised
    INTERRUPTED = "interrupted"  # Ctrl-C or a signal
    LOST = "lost"  # its keys vanished before it ended (its publisher died): set by readers

    def __str__(self) -> str:
        """The value, as stored and shown (``lost``, not ``EndReason.LOST``)."""
        return str(self.value)

    @classmethod
    def given(cls, value: str | EndReason) -> EndReason:
        """``value`` as the end reason a publisher gives; ValueError for an unknown one,
        or for ``lost``, which only a reader finds."""
        reason = cls.parse(value)
        if reason is cls.LOST:
            raise ValueError(
                "'lost' is what readers report for a scan whose publisher died; a publisher "
                "ends a scan 'finished', 'stopped', 'aborted', 'failed' or 'interrupted'"
            )
        return reason

    @classmethod
    def parse(cls, value: str | EndReason) -> EndReason:
        """``value`` as an ``EndReason``; ValueError listing the valid ones."""
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(repr(r.value) for r in cls)
            raise ValueError(f"unknown end reason {value!r}; use one of {valid}") from None


def end_reason_for(exc: BaseException | None) -> EndReason:
    """The end reason of a scan left by ``exc`` (None: a normal exit)."""
    if exc is None:
        return EndReason.FINISHED
    if isinstance(exc, StopIteration):
        return EndReason.STOPPED
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return EndReason.INTERRUPTED
    return EndReason.FAILED
