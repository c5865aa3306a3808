"""Layer introspection shared by summary and deploy: leaf layers, and precision by quantizers."""

import keras

FLOAT_BITS = 32


def quantizer_bits(quantizer):
    """Bits a quantizer emits; None for no quantizer (float)."""
    return getattr(quantizer, "bits", None) if quantizer is not None else None


def layer_precision(layer):
    """(input bits, kernel bits) of a layer: 32 where nothing quantizes."""
    input_bits = quantizer_bits(getattr(layer, "input_quantizer", None)) or FLOAT_BITS
    kernel_bits = quantizer_bits(getattr(layer, "kernel_quantizer", None)) or FLOAT_BITS
    return input_bits, kernel_bits


def one_bit_kernel_layers(model):
    """The layers with 1-bit kernels (binary and w1a2 convs): what only LCE runs as binary ops."""
    return [layer for layer in leaf_layers(model) if layer_precision(layer)[1] == 1]


def leaf_layers(model):
    """The layers of `model`, with nested models walked into, in order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer
