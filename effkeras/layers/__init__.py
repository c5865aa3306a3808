from effkeras.layers.activations import (BSplineActivation, LerpPSA, LerpTable, ResPSA,
                                         TotalVariation2)
from effkeras.layers.collapsible import CollapsibleConv2D
from effkeras.layers.convnext import LayerScale
from effkeras.layers.common import (BatchNormalization, BlurPool, ChannelPad, LearnableBias,
                                    PixelNormalization, normalize_pixels, option_a_shortcut)
from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.quantized import (QuantConv2D, QuantDense, QuantDepthwiseConv2D,
                                       QuantSeparableConv2D)
from effkeras.layers.ranet import BilinearResize
from effkeras.layers.recu import ReCUConv2D

__all__ = ["BSplineActivation", "BatchNormalization", "BilinearResize", "BlurPool", "ChannelPad", "CollapsibleConv2D", "LayerScale", "LearnableBias", "LerpPSA", "LerpTable",
           "PixelEmbedding", "PixelNormalization", "QuantConv2D", "QuantDense",
           "QuantDepthwiseConv2D", "QuantSeparableConv2D", "ReCUConv2D", "ResPSA", "TotalVariation2", "normalize_pixels",
           "option_a_shortcut"]
