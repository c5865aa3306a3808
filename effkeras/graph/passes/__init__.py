"""Graph passes run before export: each takes a functional Keras model and returns a new one.

rewrite.py  the clone-and-replace rewriter every pass is built on (and looking through padding)
fold_bn.py  inference BatchNormalization as a per-channel affine, to fold into a neighbour
collapse.py collapsible linear blocks (RAN-e) -> one Conv2D each, BN folded in
freeze_tables.py  LerpPSA/ResPSA/BSplineActivation -> constant LerpTable each (residual and
            the BN before it folded in); the int8 target then writes those tables into the
            converted file as exact int8 tables (deploy/int8_tables.py)
w1a2.py     w1a2 convs (ERN) -> exact sums of binary convs that LCE accelerates
binary_int8.py  binary and w1a2 layers -> int8 steps and ±α convs the int8 builtins compute
rgb_input.py  a grayscale model given an RGB input (luma first), for RGB-only app clients
"""

from effkeras.graph.passes.rgb_input import rgb_input, to_rgb

__all__ = ["rgb_input", "to_rgb"]
