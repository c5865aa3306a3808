"""Learning-rate schedules by name: (schedule, recipe, peak, total steps, steps per epoch) ->
a Keras schedule (or a constant). `Schedule.kind` names one of SCHEDULES."""

import keras

# --- schedules: (schedule, recipe, peak, total steps, steps per epoch) -> Keras schedule ---------


def cosine(schedule, recipe, peak, total, steps_per_epoch):
    warmup = min(round(total * schedule.warmup_epochs / recipe.epochs), total - 1)
    # Keras decays to alpha·peak; a final rate above the peak (a tiny --learning_rate) stays flat.
    alpha = min(schedule.final_learning_rate / peak, 1.0) if peak > 0 else 0.0
    if warmup:
        return keras.optimizers.schedules.CosineDecay(
            0.0, total - warmup, alpha=alpha, warmup_target=peak, warmup_steps=warmup
        )
    return keras.optimizers.schedules.CosineDecay(peak, total, alpha=alpha)


def multistep(schedule, recipe, peak, total, steps_per_epoch):
    # PiecewiseConstantDecay keeps values[k] while step <= boundaries[k]: the first step of the
    # milestone epoch already gets the lower rate.
    boundaries = [round(m * total) - 1 for m in schedule.milestones]
    values = [peak * schedule.gamma**k for k in range(len(boundaries) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)


def exponential(schedule, recipe, peak, total, steps_per_epoch):
    return keras.optimizers.schedules.ExponentialDecay(
        peak, steps_per_epoch, schedule.gamma, staircase=True
    )


def linear(schedule, recipe, peak, total, steps_per_epoch):
    return keras.optimizers.schedules.PolynomialDecay(peak, total, end_learning_rate=0.0, power=1.0)


def constant(schedule, recipe, peak, total, steps_per_epoch):
    return peak


SCHEDULES = {
    "cosine": cosine,
    "multistep": multistep,
    "exponential": exponential,
    "linear": linear,
    "constant": constant,
}
