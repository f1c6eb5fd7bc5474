"""The errors edgetx raises on purpose. Each message says what was wrong and how to fix it;
the CLI prints them without a traceback."""


class EdgetxError(Exception):
    """Base of every error edgetx raises for bad input, files or environment."""


class BundleError(EdgetxError):
    """A bundle is missing, altered, incomplete or of an unknown schema."""


class InputError(EdgetxError):
    """Inputs given to a session do not match the model's I/O signature."""


class BackendError(EdgetxError):
    """A backend is unavailable or failed to load or run a model."""
