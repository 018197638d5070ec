"""Online analysis as map-reduce on the bus."""
