"""The `captioner` command-line entry point (`captioner.cli:main`)."""
