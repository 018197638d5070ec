"""``DataNode`` and ``DataNodeContainer``: the bases BLISS scripts check nodes against
(``isinstance(node, DataNodeContainer)``); every classic node class derives from one."""

from __future__ import annotations

import warnings
from typing import Any


class DataNode:
    """Mixed into every classic node class (``ChannelDataNode``, ``ScanNode``...), after
    the SDK node it extends: what BLISS's ``DataNode`` has that the SDK's nodes do not."""

    @property
    def iterator(self) -> Any:
        """The node itself: BLISS's deprecated ``node.iterator.walk(...)`` spelling."""
        warnings.warn("node.iterator is deprecated, use the node itself", FutureWarning, 2)
        return self


class DataNodeContainer(DataNode):
    """A node with children (a session or a scan), as BLISS's ``DataNodeContainer``."""
