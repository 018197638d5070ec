"""BLISS's ``data.nodes``: the node classes by kind (``channel``, ``lima``, ``scan``)."""
