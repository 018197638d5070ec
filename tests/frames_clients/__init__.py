"""Clients written to the rules of the frames bridge's peers (CrystFEL), for its tests."""
