"""Frames for the crystallography world: CrystFEL/OnDA over 0MQ and karabo-bridge."""
