"""Ready-made watchdog hooks for scans (installed as ``databus.hooks``)."""

from .watchdogs import (
    AbortOnSilence,
    StopAfterFailures,
    StopOnChannel,
    StopOnThreshold,
    StopOutsideWindow,
)

__all__ = [
    "AbortOnSilence",
    "StopAfterFailures",
    "StopOnChannel",
    "StopOnThreshold",
    "StopOutsideWindow",
]
