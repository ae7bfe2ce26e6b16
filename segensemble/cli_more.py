"""Subcommands added by later features (pseudo-label, serve, demo); registered by cli.build_parser."""

COMMANDS: list = []
