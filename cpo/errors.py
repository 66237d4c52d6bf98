"""The project's expected-error types, in a module light enough for every app to import first.

Apps print them as ``error: <message>`` and exit 2 (cpo.cli). ``DataError`` and ``Unavailable`` live in
cpo.io beside the readers that raise them.
"""


class ConfigError(ValueError):
    """A setting that cannot work; the message names the key and what to do next."""


class ModelError(RuntimeError):
    """A model that cannot do what is asked of it (e.g. its outputs are not numbers); the message names it."""
