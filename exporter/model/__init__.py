"""What every layer speaks: samples and readings, the metric catalogue, poll errors, and the
JSON and text checks every byte from outside passes first."""
