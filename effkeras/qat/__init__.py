"""int8 quantization-aware training (QAT) for Keras 3 models, in the form TFLite deploys.

    quantize_model(model, calibration)  the QAT copy of a trained float model (transform.py),
                                        its quantization points placed by the policy table
    calibrate(model, images)            activation ranges from a calibration set, as PTQ's
    set_mode, is_qat_model, ...         switches and queries over a QAT model

The layers (FakeQuant, QATConv2D, QATDepthwiseConv2D, QATDense, ChannelAffine) live in
effkeras.layers.qat, so that `import effkeras` registers them. The int8 file of a QAT model and
its op-by-op check are a deploy target's business (effkeras.deploy.int8_qat).
"""

from effkeras.layers.qat import (ChannelAffine, FakeQuant, FoldedBatchNorm, QATConv2D, QATDense,
                                 QATDepthwiseConv2D)
from effkeras.qat.transform import (FIXED_OUTPUT_RANGES, INPUT_RANGE, MAX_BIAS_CODE, MODES,
                                    calibrate, input_quantizer, is_qat_model, output_quantizers,
                                    quantize_model, quantized_layers, set_mode, snap_biases,
                                    unobserved)

__all__ = ["FIXED_OUTPUT_RANGES", "INPUT_RANGE", "MAX_BIAS_CODE", "MODES", "ChannelAffine",
           "FakeQuant", "FoldedBatchNorm", "QATConv2D", "QATDense", "QATDepthwiseConv2D",
           "calibrate", "input_quantizer", "is_qat_model", "output_quantizers", "quantize_model",
           "quantized_layers", "set_mode", "snap_biases", "unobserved"]
