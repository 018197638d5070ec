"""BLISS's tree below a scan: the devices of the acquisition chain as container nodes
(``axis`` -> ``timer`` -> a counter controller), each holding its channels, as BLISS's
scans create them. A channel's ``db_name`` is its container's followed by its short name
(``<scan>:axis:timer:elapsed_time``) and its ``parent`` is that container, so scripts that
find a scan's top masters (``node.parent.type == "scan"``) or group channels under them
(``top.db_name in channel.db_name``) work. The tree comes from the scan info's
``acquisition_chain`` and ``devices`` (as the runner and BLISS publish them); a channel of
no known device hangs from a container named by its prefix (``det`` of ``det:image``), a
channel with no prefix from the scan itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..._subscribe import Node
from ._base import DataNodeContainer


class ContainerNode(Node, DataNodeContainer):
    """A device of the acquisition chain, between a scan and its channels (BLISS's
    container nodes; ``type`` None, as theirs). ``children()``: its channels and the
    devices it triggers, in walk order."""

    type = None  # type: ignore[assignment]

    def __init__(self, scan: Any, name: str, parent: Node) -> None:
        super().__init__(scan.bus, f"{parent.db_name}:{name}", name, parent)
        self.scan = scan

    def children(self) -> list[Node]:
        return [node for node in self.scan._below() if node.parent is self]


def device_paths(info: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Each device of the scan info's acquisition chain -> the devices from its top
    master down to it (the top masters' ``triggered_devices``, recursively)."""
    chain, devices = info.get("acquisition_chain"), info.get("devices")
    if not isinstance(chain, Mapping):
        return {}
    devices = devices if isinstance(devices, Mapping) else {}
    paths: dict[str, tuple[str, ...]] = {}
    todo: list[tuple[str, ...]] = [
        (str(desc.get("top_master", top)),) if isinstance(desc, Mapping) else (str(top),)
        for top, desc in chain.items()
    ]
    while todo:
        path = todo.pop(0)
        if path[-1] in paths:
            continue
        paths[path[-1]] = path
        described = devices.get(path[-1])
        below = described.get("triggered_devices", []) if isinstance(described, Mapping) else []
        todo += [(*path, str(d)) for d in below if isinstance(d, str)]
    return paths


def channel_devices(info: Mapping[str, Any]) -> dict[str, str]:
    """Channel full name -> the device that declares it in the scan info's ``devices``."""
    devices = info.get("devices")
    if not isinstance(devices, Mapping):
        return {}
    return {
        str(channel): str(device)
        for device, described in devices.items()
        if isinstance(described, Mapping)
        for channel in described.get("channels", [])
    }


class ScanTree:
    """The container nodes of one scan node, built once from its info."""

    def __init__(self, scan: Any) -> None:
        self.scan = scan
        info = scan.info
        self._paths = device_paths(info)
        self._owners = channel_devices(info)
        self.containers: dict[tuple[str, ...], ContainerNode] = {}

    def path_of(self, channel: str) -> tuple[ContainerNode, ...]:
        """The containers from the scan down to ``channel``'s device, outermost first."""
        device = self._owners.get(channel) or (channel.split(":", 1)[0] if ":" in channel else "")
        if not device:
            return ()
        names = self._paths.get(device, (device,))
        nodes: list[ContainerNode] = []
        for depth in range(1, len(names) + 1):
            key = names[:depth]
            if key not in self.containers:
                parent = nodes[-1] if nodes else self.scan
                self.containers[key] = ContainerNode(self.scan, key[-1], parent)
            nodes.append(self.containers[key])
        return tuple(nodes)
