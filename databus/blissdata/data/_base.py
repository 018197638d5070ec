"""``DataNode`` and ``DataNodeContainer``: the bases BLISS scripts check nodes against
(``isinstance(node, ChannelDataNode)``, ``isinstance(node, DataNodeContainer)``); every
classic node class derives from one, after the SDK node it extends."""


class DataNode:
    """Any classic node: a channel, a scan or a session (BLISS's ``DataNode``)."""


class DataNodeContainer(DataNode):
    """A node with children, a session or a scan (BLISS's ``DataNodeContainer``); its walks
    (``walk``, ``walk_events``, ``.iterator``...) are the SDK's."""
