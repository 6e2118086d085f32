"""Subcommands beside fit/validate/test (see ``jointdiff.cli.COMMANDS``)."""
