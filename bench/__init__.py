"""Benchmarks of the exporter at fleet scale, side by side with its peers: `make bench`."""
