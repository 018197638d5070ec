"""The reducer of the azimuthal integration: publishes each frame's radial profile
(channels ``profile`` and ``radial`` of the derived scan, one point per frame), and at the
end of a mesh scan the map of the profiles' integrated intensity, laid out by the scan's
grid (channel ``map``, one point of shape (slow, fast); a point without a result is NaN).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .worker import Profile


class AzimuthalReducer:
    """One per scan (``databus run`` makes one for each)."""

    publish: Any  # given by ``databus run``: publish(name, value) to the derived scan

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.grid: tuple[int, int] | None = None
        self.sums: dict[int, float] = {}

    def process_result(self, result: Any, parameters: Any = None) -> None:
        profile = result.payload
        if not isinstance(profile, Profile):
            return
        self.publish("profile", profile.intensity)
        self.publish("radial", profile.radial)
        self.grid = profile.grid
        self.sums[result.event_number] = float(np.sum(profile.intensity))

    def finish(self, parameters: Any = None) -> None:
        if self.grid is None:
            return
        grid = np.full(self.grid, np.nan)
        for event, total in self.sums.items():
            if event < grid.size:
                grid[np.unravel_index(event, grid.shape)] = total
        self.publish("map", grid)
