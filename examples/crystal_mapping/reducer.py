"""The ``databus run`` reducer of the crystal map: collects each grid point's peaks (in
event order, from any number of workers) and, at the scan's end, links them
(``trackpy.link`` with the parameters ``search_range`` and ``memory``) and publishes the
crystal map as the processed scan, one point per grid point:

- ``axis:<motor>``: the scan's motor positions;
- ``total``: the intensity of every linked peak at the point;
- ``peak_000``, ``peak_001``...: one linked peak's intensity at each point, 0 where it is
  not seen: the map of the grain that casts it.

Its info (``peaks.map_info``) gives a mesh's grid and motors, so the NeXus writer's
default plot of ``<raw>_processed.h5`` is the ``total`` map over the grid, and a table of
the linked peaks (channel, detector position, points seen, strongest intensity).
"""

from __future__ import annotations

from typing import Any

from databus.clients.analysis import parameter_values
from databus.scan import mesh_shape

from .peaks import PointPeaks, link_peaks, map_info, row_memory
from .worker import CrystalMapWorker


class CrystalMapReducer:
    """One per scan (``databus run`` makes one for each)."""

    publish: Any  # given by ``databus run``: publish(name, value) to the derived scan
    publish_info: Any  # given by ``databus run``: info of the derived scan
    scan: Any  # given by ``databus run``: the source scan's node

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.found: dict[int, PointPeaks] = {}

    def process_result(self, result: Any, parameters: Any = None) -> None:
        if isinstance(result.payload, PointPeaks):
            self.found[result.event_number] = result.payload

    def finish(self, parameters: Any = None) -> None:
        values = parameter_values(CrystalMapWorker.describe_parameters(), parameters)
        info = self.scan.info
        channels = self.scan.channels
        npoints = min((len(channel) for channel in channels.values()), default=0)
        motors = [m for m in info.get("motors", []) if f"axis:{m}" in channels]
        axes = {f"axis:{m}": channels[f"axis:{m}"].get_as_array(0, -1) for m in motors}
        shape = mesh_shape(info)
        crystal_map = link_peaks(
            self.found,
            npoints,
            search_range=values["search_range"],
            memory=row_memory(values["memory"], shape),
        )
        used = {k: v for k, v in values.items() if k != "background"}
        self.publish_info(
            {"title": f"{info.get('title', self.scan.key)} crystal map"}
            | map_info(crystal_map, motors, shape, used)
        )
        columns = {**axes, **crystal_map.columns()}
        for point in range(npoints):
            for name, column in columns.items():
                self.publish(name, column[point])
