"""Deployment: one conversion path per target, each returning (flatbuffer bytes, report).

    lce.py          binary models -> Larq Compute Engine flatbuffer (LceBconv2d) for ARM CPUs
    restructure.py  w1a2 convs (ERN) -> exact sums of binary convs, before LCE conversion
    report.py       shared by every target: op census, size, agreement with Keras, atomic save

Targets import TensorFlow and their converter, so import them by module (`from effkeras.deploy
import lce`); this package itself stays light.
"""
