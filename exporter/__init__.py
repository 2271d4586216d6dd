"""energy-meter-exporter: a Prometheus exporter for household and commercial energy meters."""

__version__ = "0.1.0"
