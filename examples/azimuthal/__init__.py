"""Azimuthal integration of a scan's frames with pyFAI under ``databus run``: radial
profiles published back, and for a mesh scan a map of their integrated intensity."""
