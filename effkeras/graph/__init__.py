"""Layer introspection shared by summary and deploy: leaf layers, and precision by quantizers."""

import keras

FLOAT_BITS = 32


def quantizer_bits(quantizer):
    """Returns the bits a quantizer emits.

    Args:
        quantizer: a quantizer object or None.

    Returns:
        Its `bits` attribute (an int, or None where it has none); None for no quantizer
        (float).
    """
    return getattr(quantizer, "bits", None) if quantizer is not None else None


def layer_precision(layer):
    """Returns (input bits, kernel bits) of a layer, from its quantizers.

    Args:
        layer: keras.layers.Layer. Any layer; its `input_quantizer` and `kernel_quantizer`
            are read where it has them.

    Returns:
        A tuple of two ints: 32 where nothing quantizes.
    """
    input_bits = quantizer_bits(getattr(layer, "input_quantizer", None)) or FLOAT_BITS
    kernel_bits = quantizer_bits(getattr(layer, "kernel_quantizer", None)) or FLOAT_BITS
    return input_bits, kernel_bits


def one_bit_kernel_layers(model):
    """Returns the layers with 1-bit kernels (binary and w1a2 convs).

    What only LCE runs as binary ops.

    Args:
        model: keras.Model.

    Returns:
        A list of leaf layers, in order.
    """
    return [layer for layer in leaf_layers(model) if layer_precision(layer)[1] == 1]


def leaf_layers(model):
    """Yields the layers of `model`, with nested models walked into, in order.

    Args:
        model: keras.Model.

    Yields:
        Every layer that is not itself a `keras.Model`.
    """
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer
