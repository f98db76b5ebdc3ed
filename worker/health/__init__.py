"""Can this process work: health checks of the broker, the ledger and ACS authentication, served as probes."""
