"""BLISS's ``bliss.config.channels``: ``Channel``, one value shared by every process on the
bus (``Channel("stop_alignment", default_value=False)``), the SDK's ``databus.channels.Channel``.

Unlike BLISS's, the value is kept in Redis until ``retention_ttl`` after its last write, so
a holder made later reads it even when no other holder is alive."""

from ...channels import Channel

__all__ = ["Channel"]
