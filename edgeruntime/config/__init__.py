"""Configuration: config.toml, the functions' env and the resolved settings of a server."""
