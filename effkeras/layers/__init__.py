from effkeras.layers.common import ChannelPad, LearnableBias, normalize_pixels, option_a_shortcut
from effkeras.layers.ern import PixelEmbedding
from effkeras.layers.quantized import (QuantConv2D, QuantDense, QuantDepthwiseConv2D,
                                       QuantSeparableConv2D)
from effkeras.layers.recu import ReCUConv2D

__all__ = ["ChannelPad", "LearnableBias", "normalize_pixels", "option_a_shortcut", "PixelEmbedding",
           "QuantConv2D", "QuantDense", "QuantDepthwiseConv2D", "QuantSeparableConv2D", "ReCUConv2D"]
