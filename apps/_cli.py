"""What every app shares: bad input becomes one line on stderr and exit code 2."""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's start-up chatter out of the way


def import_tensorflow_quietly():
    """TF 2.21 writes start-up lines (oneDNN, CUDA probing) to fd 2 before any log setting
    applies."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            import tensorflow as tf

            tf.config.list_physical_devices()  # the CUDA probe logs on first use, not on import
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Before anything imports effkeras: `import effkeras` loads Keras, and so TensorFlow.
import_tensorflow_quietly()

from absl import app, flags, logging  # noqa: E402

from effkeras.errors import InputError  # noqa: E402

USAGE_ERROR = 2


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def run(main):
    """absl.app.run(main), turning InputError into `error: ...` and exit code 2."""

    def guarded(argv):
        if len(argv) > 1:
            fail(f"unexpected arguments {argv[1:]}; every option is a --flag")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # e.g. SavedModel export logs at INFO
        try:
            return main(argv)
        except InputError as e:
            fail(e)

    app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # absl would exit 1; a bad flag is bad input
        fail(e)


def parse_shape(text):
    """'32,32,3' -> (32, 32, 3); None/'' -> None."""
    if not text:
        return None
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise InputError(f"--input_shape must look like 32,32,3, got {text!r}") from None
