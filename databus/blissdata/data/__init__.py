"""BLISS <= 1.11 / blissdata 0.x's ``data`` package (``data.node``, ``data.nodes.*``,
``data.events``) over the bus: the node classes are the SDK's nodes (``databus.node``)
with BLISS's names and return values."""
