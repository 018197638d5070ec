"""bluesky both ways: bus scans as event-model documents over bluesky's 0MQ wire, bluesky
runs (a RunEngine callback or an existing 0MQ proxy) into the bus, and ophyd signals backed
by shared channels for suspenders. ``get_serializer(name).loads`` is the RemoteDispatcher
``deserializer`` for a bridge's ``--serializer name`` (the msgpack ones refuse the pickled
object arrays ``msgpack_numpy.unpackb`` would unpickle)."""

from ._serializers import get_serializer
from .from_bluesky import FromBluesky, FromBlueskyStatistics
from .publisher import BusPublisher, PublisherStatistics
from .signal import ChannelSignal
from .to_bluesky import ToBluesky, ToBlueskyStatistics

__all__ = [
    "BusPublisher",
    "ChannelSignal",
    "FromBluesky",
    "FromBlueskyStatistics",
    "PublisherStatistics",
    "ToBluesky",
    "ToBlueskyStatistics",
    "get_serializer",
]
