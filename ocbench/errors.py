"""User-facing errors.

An :class:`OcbenchError` message is one line that names the file or field at fault and says what
to do. The CLI prints it without a traceback (``--debug`` shows one) and exits with code 2.
"""


class OcbenchError(Exception):
    """Bad input or configuration that the user can fix."""


class DataError(OcbenchError):
    """A dataset, annotation, manifest or split file is missing or malformed."""


class ConfigError(OcbenchError):
    """An option, card, channel spec or task setting is invalid."""
