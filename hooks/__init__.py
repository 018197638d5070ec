"""Ready-made watchdog hooks for scans (installed as ``databus.hooks``)."""
