"""Graph passes run before export: each takes a functional Keras model and returns a new one.

rewrite.py  the clone-and-replace rewriter every pass is built on (and looking through padding)
fold_bn.py  inference BatchNormalization as a per-channel affine, to fold into a neighbour
collapse.py collapsible linear blocks (RAN-e) -> one Conv2D each, BN folded in
freeze_tables.py  LerpPSA/ResPSA/BSplineActivation -> constant LerpTable each (residual and
            the BN before it folded in); the int8 target then writes those tables into the
            converted file as exact int8 tables (deploy/int8_tables.py)
w1a2.py     w1a2 convs (ERN) -> exact sums of binary convs that LCE accelerates
"""
