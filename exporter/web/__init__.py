"""The exporter's HTTP side: endpoints over a read-only view of the daemon, the status page,
and the protections every listener shares."""
