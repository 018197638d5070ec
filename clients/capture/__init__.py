"""Captures of what the bus carried, and replays of them (and of dranspose's captures)."""
