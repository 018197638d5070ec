"""blissdata 2.x's ``redis_engine`` package: ``store.DataStore``, ``scan.Scan``."""
