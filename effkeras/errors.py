"""The one error type for bad user input: apps turn it into one line and exit code 2."""


class InputError(ValueError):
    """Bad user input (flags, files, shapes). The message says what to do.

    A `ValueError`, so callers that catch ValueError catch it too.
    """
