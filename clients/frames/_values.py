"""The values that go with each frame: constants (``--set``), scan-info fields
(``--from-info``), per-point channels read at the frame's index (``--from-channel``), and a
peak list from a channel of peaks (``--peaks``).

A per-point value may be published a little after its frame (another channel, another
flush): it is waited for up to ``wait`` seconds, or until its scan has ended without it.
A value that does not come is left out of the frame's message, counted, and logged once
per key (CrystFEL then cannot use that frame's missing header: say so rather than guess).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import databus

from .._points import points_when_there
from ._crystfel import PeakList

log = logging.getLogger(__name__)


def constant(text: str) -> int | float | str:
    """A ``--set`` value: an int or a float when it reads as one, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def info_value(info: Mapping[str, Any], path: str) -> Any:
    """``info[path]``, or a nested field by a dotted path (``"beam.energy"``); None if absent."""
    if path in info:
        return info[path]
    value: Any = info
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def peaks_of(point: Any) -> PeakList:
    """A point of a peaks channel as a ``PeakList``: a record ``{fs, ss, intensity}`` (json
    channel) or an (N, 3) array of rows (fs, ss, intensity); ValueError otherwise."""
    if isinstance(point, Mapping):
        try:
            return PeakList(point["fs"], point["ss"], point["intensity"])
        except KeyError as exc:
            raise ValueError(
                f"a peak record has keys fs, ss and intensity; {exc} is missing"
            ) from None
    array = np.asarray(point)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(
            f"a peaks point is a record {{fs, ss, intensity}} or an (N, 3) array of rows, "
            f"not an array of shape {array.shape}"
        )
    return PeakList(array[:, 0], array[:, 1], array[:, 2])


@dataclass
class FrameValues:
    """Resolves each frame's values from ``constants``, ``from_info`` (key -> info field)
    and ``from_channel`` (key -> channel name), and its peaks from channel ``peaks``."""

    constants: Mapping[str, Any] = field(default_factory=dict)
    from_info: Mapping[str, str] = field(default_factory=dict)
    from_channel: Mapping[str, str] = field(default_factory=dict)
    peaks: str | None = None
    wait: float = 5.0
    missing: int = 0  #: values (or peak lists) left out because they never came
    _said: set[str] = field(default_factory=set)

    @property
    def keys(self) -> list[str]:
        """Every scalar key a frame may carry."""
        return [*self.constants, *self.from_info, *self.from_channel]

    def scalars(self, scan: databus.ScanNode, index: int) -> dict[str, Any]:
        """The scalar values of point ``index`` of ``scan`` that exist."""
        values = dict(self.constants)
        for key, path in self.from_info.items():
            value = info_value(scan.info, path)
            if value is None:
                self._lost(key, f"scan info of {scan.key} has no field {path!r}")
            else:
                values[key] = value
        for key, name in self.from_channel.items():
            point = self._point(scan, name, index, key)
            if point is not None:
                values[key] = point.item() if isinstance(point, np.ndarray) else point
        return values

    def peak_list(self, scan: databus.ScanNode, index: int) -> PeakList | None:
        """The peaks of point ``index`` (None without a peaks channel, or if they never came)."""
        if self.peaks is None:
            return None
        point = self._point(scan, self.peaks, index, "peaks")
        return peaks_of(point) if point is not None else None

    def _point(self, scan: databus.ScanNode, name: str, index: int, key: str) -> Any:
        """Point ``index`` of channel ``name``, waited for; None (counted) if it never came."""
        try:
            return points_when_there(scan, name, index, None, self.wait)
        except (databus.NotYetPublished, databus.EndOfData, databus.DataExpired) as exc:
            self._lost(key, str(exc))
            return None

    def _lost(self, key: str, why: str) -> None:
        self.missing += 1
        if key not in self._said:
            self._said.add(key)
            log.warning("frames go without %r (logged once): %s", key, why)
