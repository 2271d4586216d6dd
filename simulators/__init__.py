"""Device simulators: real servers on loopback that answer like the devices of each vendor."""
