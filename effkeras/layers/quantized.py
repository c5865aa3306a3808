"""larq's quantized layers on Keras 3: the Keras layer plus input and kernel quantizers.

    QuantConv2D(64, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                kernel_quantizer="ste_sign", kernel_constraint="weight_clip")

With no quantizers a layer is exactly its Keras parent. `padding="same"` with `pad_values=1.0`
pads the quantized input with +1 explicitly and runs a VALID conv with SAME geometry: the
"same-one" pattern that LCE turns into a one-padded `LceBconv2d` (Larq Compute Engine, arXiv
2011.09398; its converter's patterns). Nothing sits between the input quantizer, the pad and the
conv, as LCE needs.
"""

import keras
from keras import ops

from effkeras import constraints, quantizers

_register = keras.saving.register_keras_serializable(package="effkeras")


def same_padding(size, kernel_size, stride, dilation_rate):
    """Returns the (before, after) padding of one spatial axis that TF's "SAME" applies.

    Args:
        size: int or scalar tensor. The axis' input size (a tensor where it is unknown).
        kernel_size: int. The kernel size along the axis.
        stride: int. The stride along the axis.
        dilation_rate: int. The dilation along the axis.

    Returns:
        A tuple `(before, after)` of ints (or scalar tensors for a tensor `size`).
    """
    effective_kernel = (kernel_size - 1) * dilation_rate + 1
    total = ((size + stride - 1) // stride - 1) * stride + effective_kernel - size
    total = max(total, 0) if isinstance(total, int) else ops.maximum(total, 0)
    return total // 2, total - total // 2


def _quantize(quantizer, x):
    return x if quantizer is None else quantizer(x)


def _quantize_kernel(quantizer, kernel):
    """The quantized kernel, computed in float32 under mixed precision too (scales such as
    mean |W| and ReCU's clamp lose precision in float16), in the kernel's dtype."""
    if quantizer is None or kernel.dtype == "float32":
        return _quantize(quantizer, kernel)
    return ops.cast(quantizer(ops.cast(kernel, "float32")), kernel.dtype)


class _QuantMixin:
    """Input quantizer, one-padding and config shared by the quantized layers."""

    def _init_quant(self, input_quantizer, pad_values=0.0):
        self.input_quantizer = quantizers.get(input_quantizer)
        self.pad_values = float(pad_values)  # as larq: used only with padding="same"

    def _pad(self, x):
        """x padded with pad_values to SAME geometry; returns (x, padding for the op)."""
        if not self.pad_values or self.padding != "same":
            return x, self.padding
        channels_last = self.data_format == "channels_last"
        shape = ops.shape(x)  # a tensor entry where the size is unknown while tracing
        spatial = shape[1:-1] if channels_last else shape[2:]
        pads = [
            same_padding(size, kernel, stride, dilation)
            for size, kernel, stride, dilation in zip(
                spatial, self.kernel_size, self.strides, self.dilation_rate
            )
        ]
        pads = [[0, 0], *pads, [0, 0]] if channels_last else [[0, 0], [0, 0], *pads]
        return ops.pad(x, pads, constant_values=self.pad_values), "valid"

    def _bias_and_activation(self, outputs):
        if self.use_bias:
            bias = self.bias
            if getattr(self, "data_format", "channels_last") == "channels_first":
                bias = ops.reshape(bias, (1, -1) + (1,) * (len(outputs.shape) - 2))
            outputs = ops.add(outputs, bias)
        return outputs if self.activation is None else self.activation(outputs)

    def _quant_config(self, **quantizer_attributes):
        config = {"input_quantizer": quantizers.serialize(self.input_quantizer)}
        for name, quantizer in quantizer_attributes.items():
            config[name] = quantizers.serialize(quantizer)
        if hasattr(self, "padding"):
            config["pad_values"] = self.pad_values
        return config


@_register
class QuantConv2D(_QuantMixin, keras.layers.Conv2D):
    """`keras.layers.Conv2D` with `input_quantizer`, `kernel_quantizer` and `pad_values`.

    larq's `QuantConv2D`: with no quantizers it is exactly `keras.layers.Conv2D`. A binary
    input and kernel quantizer (e.g. `"ste_sign"`) make it an LCE `LceBconv2d` at conversion.

    Example:

    ```python
    QuantConv2D(64, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    ```

    Args:
        filters: int. Output channels.
        kernel_size: int or tuple of 2 ints. The kernel size.
        strides: int or tuple of 2 ints. Defaults to `(1, 1)`.
        padding: str. `"valid"` or `"same"`. Defaults to `"valid"`.
        input_quantizer: str, dict, quantizer, callable or None. Quantizes the input
            (resolved by `effkeras.quantizers.get`, e.g. `"ste_sign"`). Defaults to `None`.
        kernel_quantizer: same kinds. Quantizes the kernel (in float32 under mixed
            precision). Defaults to `None`.
        kernel_constraint: str, dict, constraint or None. Resolved by
            `effkeras.constraints.get` (e.g. `"weight_clip"`). Defaults to `None`.
        pad_values: float. With `padding="same"`, the value the quantized input is padded
            with (explicitly, then a VALID op with SAME geometry); 1.0 gives LCE's one-padded
            bconv. Unused with `"valid"`. Defaults to `0.0` (zero padding).
        **kwargs: the other `keras.layers.Conv2D` arguments.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        *,
        input_quantizer=None,
        kernel_quantizer=None,
        kernel_constraint=None,
        pad_values=0.0,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            kernel_constraint=constraints.get(kernel_constraint),
            **kwargs,
        )
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self._init_quant(input_quantizer, pad_values)

    def call(self, inputs):
        return super().call(_quantize(self.input_quantizer, inputs))

    def convolution_op(self, inputs, kernel):
        inputs, padding = self._pad(inputs)
        return ops.conv(
            inputs,
            _quantize_kernel(self.kernel_quantizer, kernel),
            strides=list(self.strides),
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )

    def get_config(self):
        return {
            **super().get_config(),
            **self._quant_config(kernel_quantizer=self.kernel_quantizer),
        }


@_register
class QuantDepthwiseConv2D(_QuantMixin, keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` with `input_quantizer`, `depthwise_quantizer` (larq's
    names) and `pad_values`. LCE has no binary depthwise conv: it stays float after conversion.

    Args:
        kernel_size: int or tuple of 2 ints. The kernel size.
        strides: int or tuple of 2 ints. Defaults to `(1, 1)`.
        padding: str. `"valid"` or `"same"`. Defaults to `"valid"`.
        input_quantizer: str, dict, quantizer, callable or None. Quantizes the input
            (resolved by `effkeras.quantizers.get`, e.g. `"ste_sign"`). Defaults to `None`.
        depthwise_quantizer: same kinds. Quantizes the depthwise kernel. Defaults to `None`.
        depthwise_constraint: str, dict, constraint or None. Resolved by
            `effkeras.constraints.get`. Defaults to `None`.
        pad_values: float. With `padding="same"`, the value the quantized input is padded
            with (explicitly, then a VALID op with SAME geometry); 1.0 gives LCE's one-padded
            bconv. Unused with `"valid"`. Defaults to `0.0` (zero padding).
        **kwargs: the other `keras.layers.DepthwiseConv2D` arguments.
    """

    def __init__(
        self,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        *,
        input_quantizer=None,
        depthwise_quantizer=None,
        depthwise_constraint=None,
        pad_values=0.0,
        **kwargs,
    ):
        super().__init__(
            kernel_size,
            strides=strides,
            padding=padding,
            depthwise_constraint=constraints.get(depthwise_constraint),
            **kwargs,
        )
        self.depthwise_quantizer = quantizers.get(depthwise_quantizer)
        self._init_quant(input_quantizer, pad_values)

    @property
    def kernel_quantizer(self):
        """The depthwise quantizer under the name effkeras.graph.summary reads."""
        return self.depthwise_quantizer

    def call(self, inputs):
        inputs, padding = self._pad(_quantize(self.input_quantizer, inputs))
        outputs = ops.depthwise_conv(
            inputs,
            _quantize_kernel(self.depthwise_quantizer, self.kernel),
            strides=self.strides,
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._bias_and_activation(outputs)

    def get_config(self):
        return {
            **super().get_config(),
            **self._quant_config(depthwise_quantizer=self.depthwise_quantizer),
        }


@_register
class QuantSeparableConv2D(_QuantMixin, keras.layers.SeparableConv2D):
    """`keras.layers.SeparableConv2D` with `input_quantizer`, `depthwise_quantizer`,
    `pointwise_quantizer` and `pad_values`, as larq.

    Args:
        filters: int. Output channels.
        kernel_size: int or tuple of 2 ints. The depthwise kernel size.
        strides: int or tuple of 2 ints. Defaults to `(1, 1)`.
        padding: str. `"valid"` or `"same"`. Defaults to `"valid"`.
        input_quantizer: str, dict, quantizer, callable or None. Quantizes the input
            (resolved by `effkeras.quantizers.get`, e.g. `"ste_sign"`). Defaults to `None`.
        depthwise_quantizer: same kinds. Quantizes the depthwise kernel. Defaults to `None`.
        pointwise_quantizer: same kinds. Quantizes the pointwise kernel. Defaults to `None`.
        depthwise_constraint: str, dict, constraint or None. Defaults to `None`.
        pointwise_constraint: str, dict, constraint or None. Defaults to `None`.
        pad_values: float. With `padding="same"`, the value the quantized input is padded
            with (explicitly, then a VALID op with SAME geometry); 1.0 gives LCE's one-padded
            bconv. Unused with `"valid"`. Defaults to `0.0` (zero padding).
        **kwargs: the other `keras.layers.SeparableConv2D` arguments.
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="valid",
        *,
        input_quantizer=None,
        depthwise_quantizer=None,
        pointwise_quantizer=None,
        depthwise_constraint=None,
        pointwise_constraint=None,
        pad_values=0.0,
        **kwargs,
    ):
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            depthwise_constraint=constraints.get(depthwise_constraint),
            pointwise_constraint=constraints.get(pointwise_constraint),
            **kwargs,
        )
        self.depthwise_quantizer = quantizers.get(depthwise_quantizer)
        self.pointwise_quantizer = quantizers.get(pointwise_quantizer)
        self._init_quant(input_quantizer, pad_values)

    @property
    def kernel_quantizer(self):
        """For effkeras.graph.summary: the pointwise quantizer when both kernels share its bits."""
        depthwise_bits = getattr(self.depthwise_quantizer, "bits", None)
        pointwise_bits = getattr(self.pointwise_quantizer, "bits", None)
        return self.pointwise_quantizer if depthwise_bits == pointwise_bits else None

    def call(self, inputs):
        inputs, padding = self._pad(_quantize(self.input_quantizer, inputs))
        outputs = ops.separable_conv(
            inputs,
            _quantize_kernel(self.depthwise_quantizer, self.depthwise_kernel),
            _quantize_kernel(self.pointwise_quantizer, self.pointwise_kernel),
            strides=self.strides,
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )
        return self._bias_and_activation(outputs)

    def get_config(self):
        return {
            **super().get_config(),
            **self._quant_config(
                depthwise_quantizer=self.depthwise_quantizer,
                pointwise_quantizer=self.pointwise_quantizer,
            ),
        }


@_register
class QuantDense(_QuantMixin, keras.layers.Dense):
    """`keras.layers.Dense` with `input_quantizer` and `kernel_quantizer`. LCE has no binary
    fully-connected op: use a 1x1 QuantConv2D where the dense layer must run binary.

    Args:
        units: int. Output units.
        input_quantizer: str, dict, quantizer, callable or None. Quantizes the input
            (resolved by `effkeras.quantizers.get`, e.g. `"ste_sign"`). Defaults to `None`.
        kernel_quantizer: same kinds. Quantizes the kernel. Defaults to `None`.
        kernel_constraint: str, dict, constraint or None. Resolved by
            `effkeras.constraints.get`. Defaults to `None`.
        **kwargs: the other `keras.layers.Dense` arguments.
    """

    def __init__(
        self,
        units,
        *,
        input_quantizer=None,
        kernel_quantizer=None,
        kernel_constraint=None,
        **kwargs,
    ):
        super().__init__(units, kernel_constraint=constraints.get(kernel_constraint), **kwargs)
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        self._init_quant(input_quantizer)

    def call(self, inputs, training=None):
        inputs = _quantize(self.input_quantizer, inputs)
        outputs = ops.matmul(inputs, _quantize_kernel(self.kernel_quantizer, self.kernel))
        return self._bias_and_activation(outputs)

    def get_config(self):
        return {
            **super().get_config(),
            **self._quant_config(kernel_quantizer=self.kernel_quantizer),
        }
