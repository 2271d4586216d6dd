"""Running the targets: the scheduler (the only owner of time: intervals, timeouts, backoff),
what adapters get from the daemon, quotas, the state directory, sharding, logging."""
