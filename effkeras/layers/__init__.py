"""Every serializable layer of effkeras: importing this package registers them all with Keras.

quantized.py    larq's quantized layers (QuantConv2D, QuantDense, ...) on Keras 3
recu.py         ReCU's conv (rectified clamp of latent weights)
ern.py          ERN's pixel thermometer embedding
w1a2.py         PlaneConv2D: a w1a2 conv as binary convs over ±1 planes (the w1a2 pass)
activations.py  LERP-PSA, ResPSA, B-spline activations and the LerpTable they freeze to
collapsible.py  RAN-e's collapsible linear blocks
convnext.py     LayerScale (RAN-i's ConvNeXt, ResMLP)
ranet.py        RANet's bilinear resize
common.py       fused BatchNormalization, BlurPool, ChannelPad, LearnableBias, pixel
                normalization
qat.py          int8 QAT layers (FakeQuant, QATConv2D, ...) and QATHardSwish
int8_step.py    Int8Step: a binary layer's input quantizer as exact int8 ops
imported.py     the layers imported Keras 2 / larq models are made of (TFOpCall, ...)
"""

from effkeras.layers.activations import (
    BSplineActivation,
    LerpPSA,
    LerpTable,
    ResPSA,
    TotalVariation2,
)
from effkeras.layers.collapsible import CollapsibleConv2D
from effkeras.layers.common import (
    BatchNormalization,
    BlurPool,
    ChannelPad,
    LearnableBias,
    PixelNormalization,
    normalize_pixels,
    option_a_shortcut,
)
from effkeras.layers.convnext import LayerScale
from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.imported import AddToLastChannels, TFOpCall
from effkeras.layers.int8_step import Int8Step
from effkeras.layers.qat import (
    ChannelAffine,
    FakeQuant,
    QATConv2D,
    QATDense,
    QATDepthwiseConv2D,
    QATHardSwish,
)
from effkeras.layers.quantized import (
    QuantConv2D,
    QuantDense,
    QuantDepthwiseConv2D,
    QuantSeparableConv2D,
)
from effkeras.layers.ranet import BilinearResize
from effkeras.layers.recu import ReCUConv2D
from effkeras.layers.w1a2 import PlaneConv2D

__all__ = [
    "AddToLastChannels",
    "BSplineActivation",
    "BatchNormalization",
    "BilinearResize",
    "BlurPool",
    "ChannelAffine",
    "ChannelPad",
    "CollapsibleConv2D",
    "FakeQuant",
    "Int8Step",
    "LayerScale",
    "LearnableBias",
    "LerpPSA",
    "LerpTable",
    "PixelEmbedding",
    "PixelNormalization",
    "PlaneConv2D",
    "QATConv2D",
    "QATDense",
    "QATDepthwiseConv2D",
    "QATHardSwish",
    "QuantConv2D",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantSeparableConv2D",
    "ReCUConv2D",
    "ResPSA",
    "TFOpCall",
    "TotalVariation2",
    "normalize_pixels",
    "option_a_shortcut",
]
