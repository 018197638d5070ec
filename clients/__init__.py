"""databus clients (installed as ``databus.clients``): file writer, monitor, bridges, replay."""
