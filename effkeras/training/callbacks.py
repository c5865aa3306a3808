"""Callbacks that recipes ask for by name."""

import math

import keras

from effkeras.graph import leaf_layers


def recu_tau(epoch, epochs, tau_min=0.85, tau_max=0.99):
    """ReCU's exponential τ schedule, Eq. (24): τ_i = τ_s + (τ_e - τ_s)(e^{i/I} - 1)/(e - 1)."""
    return tau_min + (tau_max - tau_min) * (math.exp(epoch / epochs) - 1) / (math.e - 1)


class TauSchedule(keras.callbacks.Callback):
    """Sets τ of every ReCU layer at the start of each epoch (ReCU, arXiv 2103.12369, Eq. (24)).

    τ is a model weight, so it is saved in checkpoints and restored on resume; setting it at
    each epoch start keeps it exact whatever the resume point.
    """

    def __init__(self, epochs, tau_min=0.85, tau_max=0.99):
        super().__init__()
        self.epochs, self.tau_min, self.tau_max = epochs, tau_min, tau_max

    def on_epoch_begin(self, epoch, logs=None):
        tau = recu_tau(epoch, self.epochs, self.tau_min, self.tau_max)
        for layer in leaf_layers(self.model):
            if hasattr(layer, "tau"):
                layer.tau.assign(tau)


CALLBACKS = {"recu_tau": TauSchedule}


def make(names, epochs):
    return [CALLBACKS[name](epochs) for name in names]
