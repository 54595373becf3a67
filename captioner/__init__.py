"""The application on top: the `captioner` command (`captioner.cli:main`), its service commands
and demo, the process runner, progress bars and gunicorn's settings.

Nothing imports this package but the development harness (dev/); it imports every other one.
"""
