"""BLISS's ``bliss.config`` names a data script uses (``config.channels.Channel``)."""
