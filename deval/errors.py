"""The errors deval raises on purpose; the CLI prints these as one line and exits 2."""


class DevalError(Exception):
    """Root of every error the CLI reports as a one-line message."""


class ConfigError(DevalError):
    """Bad input: an option, a task file, a preset file or a run directory."""


class BackendUnavailable(DevalError):
    """A backend's optional dependency or model file is missing."""


class BackendError(DevalError):
    """A backend failed in a way that retrying will not fix."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: `path` holds every finished record, so the run can be resumed from it."""

    def __init__(self, path):
        super().__init__(f"interrupted: every finished record is in {path}")
        self.path = path
