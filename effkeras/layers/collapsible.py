"""The collapsible linear block of RAN-e (Restructurable Activation Networks, arXiv 2208.08562),
with the linear over-parameterisation and "collapsed training" of SESR (arXiv 2103.09404).

The block is linear inside, so at inference it is exactly one k×k conv Cin→filters ("same"
padding, no bias), which the `collapse` deploy pass writes out as a plain Conv2D.

- `expansion=None`: one plain k×k conv, as the released RAN-e code trains it.
- `expansion=t`: a k×k conv Cin→E then a 1×1 conv E→filters, both bias-free, with
  E = round(t·max(Cin, filters)). It trains in collapsed form (SESR): every call builds
  Wc[h,w,i,o] = Σ_m W1[h,w,i,m]·W2[0,0,m,o] and runs one conv with Wc; the gradients still
  reach W1 and W2. The 1×1 conv commutes with subsampling, so this is exact for any stride.
  The expansion convs carry no bias: a bias before the k×k conv would leak into the zero border.
- `residual=True`: y = conv(x) + x, folded into the kernel as +1 at the centre tap.
"""

import numbers

import keras
import numpy as np
from keras import ops

from effkeras.errors import InputError

# Conv2D arguments this block fixes; a caller may pass them only with these values.
_FIXED = {
    "padding": "same",
    "use_bias": False,
    "groups": 1,
    "dilation_rate": (1, 1),
    "data_format": "channels_last",
}
_DROPPED = ("bias_initializer", "bias_regularizer", "bias_constraint", "lora_rank", "lora_alpha")


@keras.saving.register_keras_serializable(package="effkeras")
class CollapsibleConv2D(keras.layers.Conv2D):
    """A linear k×k conv block ("same" padding, no bias) that collapses to one Conv2D.

    `kernel` is the effective HWIO kernel the layer convolves with (expansion multiplied out,
    identity included); the trained weights are `kernel` (plain form, no residual: the variable
    itself) or `expand_kernel` [k,k,Cin,E] and `project_kernel` [1,1,E,filters].
    `kernel_regularizer` and `kernel_constraint` apply to each trained weight.
    Summaries count it as one k×k conv Cin→filters (inference MACs) with its trained params.

    Reference:
        - [Bhardwaj et al., Restructurable Activation Networks, 2022](
            https://arxiv.org/abs/2208.08562)
        - [Bhardwaj et al., Collapsible Linear Blocks for Super-Efficient Super Resolution
            (SESR), MLSys 2022](https://arxiv.org/abs/2103.09404)

    Args:
        filters: int. Output channels.
        kernel_size: int or tuple of 2 ints. Defaults to `3`.
        strides: int or tuple of 2 ints. Defaults to `1`.
        expansion: number > 0 or None. `None`: one plain k×k conv; t: a k×k conv Cin→E then a
            1×1 conv E→filters, E = round(t·max(Cin, filters)), trained collapsed. Defaults
            to `None`.
        residual: bool. Add the input (y = conv(x) + x, folded in at the centre tap); needs
            input channels == filters and strides 1. Defaults to `False`.
        kernel_initializer: initializer of each trained weight. Defaults to
            `"glorot_uniform"`.
        kernel_regularizer: regularizer or None, of each trained weight. Defaults to `None`.
        activation: must be None or linear: the block is linear inside. Defaults to `None`.
        name: str or None. The layer name. Defaults to `None`.
        **kwargs: other `Conv2D` arguments; `padding`, `use_bias`, `groups`, `dilation_rate`
            and `data_format` only with the values the block fixes ("same", False, 1, (1, 1),
            "channels_last"); bias and LoRA arguments are dropped.

    Raises:
        InputError: for a non-linear `activation`, an `expansion` that is not None or a number
            > 0, or a fixed Conv2D argument with another value; when built, for `residual`
            with input channels != filters or strides != 1.
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        strides=1,
        expansion=None,
        residual=False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        activation=None,
        name=None,
        **kwargs,
    ):
        if keras.activations.get(activation) is not keras.activations.linear:
            raise InputError(
                f"CollapsibleConv2D got activation={activation!r}, but a collapsible "
                "block is linear inside: apply the activation after the block, e.g. "
                "layers.Activation(...)"
            )
        if expansion is not None and (
            isinstance(expansion, bool) or not isinstance(expansion, numbers.Real) or expansion <= 0
        ):
            raise InputError(
                f"CollapsibleConv2D expansion must be None (plain conv) or a number "
                f"> 0, got {expansion!r}"
            )
        for key, value in _FIXED.items():
            if key in kwargs:
                given = kwargs.pop(key)
                if key == "dilation_rate":
                    given = (given, given) if isinstance(given, int) else tuple(given)
                if given != value:
                    raise InputError(
                        f"CollapsibleConv2D always uses {key}={value!r}; got "
                        f"{given!r}. Use keras.layers.Conv2D for other settings."
                    )
        for key in _DROPPED:
            kwargs.pop(key, None)
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            activation=None,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            name=name,
            **_FIXED,
            **kwargs,
        )
        self.expansion = None if expansion is None else float(expansion)
        self.residual = bool(residual)

    def build(self, input_shape):
        cin = input_shape[-1]
        if self.residual and (cin != self.filters or self.strides != (1, 1)):
            raise InputError(
                f"{self.name}: residual=True adds the input to the output, so it "
                f"needs input channels == filters and strides 1; got {cin} -> "
                f"{self.filters} channels, strides {self.strides}. Use "
                "residual=False there."
            )
        if self.expansion is None:
            super().build(input_shape)  # creates `kernel` [k,k,Cin,filters]
        else:
            self.compute_output_shape(input_shape)  # validates the shape
            self.input_spec = keras.layers.InputSpec(min_ndim=4, axes={-1: cin})
            width = self.expanded_width(cin)
            common = dict(
                initializer=self.kernel_initializer,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
                trainable=True,
                dtype=self.dtype,
            )
            self.expand_kernel = self.add_weight(
                name="expand_kernel", shape=self.kernel_size + (cin, width), **common
            )
            self.project_kernel = self.add_weight(
                name="project_kernel", shape=(1, 1, width, self.filters), **common
            )
            self.bias = None
        if self.residual:
            # TF "same" padding puts (k-1)//2 zeros before, so that tap reads x itself
            # (the centre tap k//2 for the odd kernels this block is meant for).
            kh, kw = self.kernel_size
            identity = np.zeros(self.kernel_size + (cin, cin), np.float32)
            identity[(kh - 1) // 2, (kw - 1) // 2] = np.eye(cin, dtype=np.float32)
            self._identity = identity
        self.built = True

    def expanded_width(self, cin):
        """Returns E = round(t·max(Cin, filters)), at least 1, for input channels `cin`."""
        return max(1, int(round(self.expansion * max(cin, self.filters))))

    def trained_weights(self):
        """The weights training updates: [kernel] or [expand_kernel, project_kernel]."""
        if self.expansion is None:
            return [self._kernel]
        return [self.expand_kernel, self.project_kernel]

    @property
    def kernel(self):
        if not self.built:
            raise AttributeError("You must build the layer before accessing `kernel`.")
        if self.expansion is None:
            kernel = self._kernel
        else:
            kernel = ops.einsum("hwim,mo->hwio", self.expand_kernel, self.project_kernel[0, 0])
        if self.residual:
            kernel = kernel + ops.cast(self._identity, kernel.dtype)
        return kernel

    def collapsed_kernel(self):
        """The inference HWIO kernel [k,k,Cin,filters] as numpy (identity included)."""
        return ops.convert_to_numpy(self.kernel)

    def enable_lora(self, *args, **kwargs):
        raise InputError("CollapsibleConv2D does not support LoRA; train it directly.")

    # Conv2D saves `kernel` (here the effective kernel); save the trained weights instead.
    def save_own_variables(self, store):
        if not self.built:
            return
        for i, variable in enumerate(self.trained_weights()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        self._check_load_own_variables(store)
        if not self.built:
            return
        for i, variable in enumerate(self.trained_weights()):
            variable.assign(store[str(i)])

    def get_config(self):
        config = super().get_config()
        for key in (*_FIXED, *_DROPPED):
            config.pop(key, None)
        config.update(expansion=self.expansion, residual=self.residual)
        return config
