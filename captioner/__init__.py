"""The application on top: the `captioner` command (`captioner.cli:main`), its service commands
and demo, the process runner, the HTTP client, and the throwaway stack tests and benchmarks run.

Nothing imports this package; it imports every other one.
"""
