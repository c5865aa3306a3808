"""int8 quantization-aware training (QAT) for Keras 3 models, in the form TFLite deploys.

Integer-arithmetic-only inference (Jacob et al., arXiv 1712.05877): int8 weights per output
channel, int8 activations per tensor. QAT simulates that rounding in the float graph with
fake-quant ops, which the TFLite converter turns into int8 ops with exactly those ranges.

    scheme.SCHEME                       the policy: one row per Keras layer class (which weights
                                        and outputs get a quantization point), as TFMOT's
                                        default 8-bit registry
    quantize_model(model, calibration)  the QAT copy of a trained float model (transform.py)
    calibrate(model, images)            activation ranges from a calibration set, as PTQ's
    set_mode, snap_biases, freeze_steps, freeze_hard_swish, unobserved, input_quantizer, ...
                                        switches and queries over a QAT model (calibrate.py)

The layers (FakeQuant, QATConv2D, QATDepthwiseConv2D, QATDense, ChannelAffine, QATHardSwish)
live in effkeras.layers.qat, so that `import effkeras` registers them. The int8 file of a QAT
model and its op-by-op check are a deploy target's business (effkeras.deploy.int8_qat).
"""

from effkeras.layers.qat import (
    ChannelAffine,
    FakeQuant,
    FoldedBatchNorm,
    QATConv2D,
    QATDense,
    QATDepthwiseConv2D,
    QATHardSwish,
)
from effkeras.qat.calibrate import (
    MAX_BIAS_CODE,
    MODES,
    calibrate,
    freeze_hard_swish,
    freeze_steps,
    input_quantizer,
    is_qat_model,
    output_quantizer,
    output_quantizers,
    quantized_layers,
    set_mode,
    snap_biases,
    unobserved,
)
from effkeras.qat.scheme import FIXED_OUTPUT_RANGES, INPUT_RANGE, SCHEME, Policy
from effkeras.qat.transform import quantize_model

__all__ = [
    "FIXED_OUTPUT_RANGES",
    "INPUT_RANGE",
    "MAX_BIAS_CODE",
    "MODES",
    "SCHEME",
    "ChannelAffine",
    "FakeQuant",
    "FoldedBatchNorm",
    "Policy",
    "QATConv2D",
    "QATDense",
    "QATDepthwiseConv2D",
    "QATHardSwish",
    "calibrate",
    "freeze_hard_swish",
    "freeze_steps",
    "input_quantizer",
    "is_qat_model",
    "output_quantizer",
    "output_quantizers",
    "quantize_model",
    "quantized_layers",
    "set_mode",
    "snap_biases",
    "unobserved",
]
