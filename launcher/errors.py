"""Errors the launcher reports as one line (exit code 1) instead of a traceback."""


class LaunchError(RuntimeError):
    """A submission, status, logs or cancel request could not be carried out; the message says why."""
