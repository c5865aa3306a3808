"""Graph passes run before export: each takes a functional Keras model and returns a new one.

    rewrite.py  the clone-and-replace rewriter every pass is built on (and looking through padding)
    fold_bn.py  inference BatchNormalization folded into the layer before it
    collapse.py collapsible linear blocks (RAN-e) -> one Conv2D each, BN folded in
    w1a2.py     w1a2 convs (ERN) -> exact sums of binary convs that LCE accelerates
"""
