"""blissdata's API over the bus: port a BLISS or blissdata script by changing its import
prefix from ``blissdata`` to ``databus.blissdata`` (``bliss.data`` -> ``databus.blissdata.data``
for BLISS <= 1.11)."""
