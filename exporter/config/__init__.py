"""The configuration: the YAML loader with its line map and checks, and --web.config.file."""
