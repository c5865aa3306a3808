"""The exit logic of early-exit networks, in pure NumPy: shared by evaluation and deployment.

    exits.py            confidence (softmax maximum), thresholds calibrated to exit
                        proportions, the bisection that meets a FLOPs budget, the exits taken
                        and their expected cost
    thresholds_file.py  the thresholds file: write_thresholds, and load_thresholds (a file, a
                        dict or K numbers), with every check

It imports nothing of effkeras above errors and fileio: effkeras.evaluation.early_exit scores
Keras models with it, and effkeras.deploy.early_exit.Runner runs converted files with it.
"""

from effkeras.early_exit.exits import (
    BISECTION_STEPS,
    FLOOR_SLACK,
    LAST,
    NEVER,
    R_HIGH,
    R_LOW,
    SWEEP,
    apply_thresholds,
    average_flops,
    calibrate_thresholds,
    check_budget,
    descending,
    exit_fractions,
    exit_proportions,
    exits_taken,
    expected_cost,
    max_softmax,
    softmax,
    thresholds_for_budget,
)
from effkeras.early_exit.thresholds_file import (
    MAX_THRESHOLDS_BYTES,
    THRESHOLD_KEYS,
    load_thresholds,
    write_thresholds,
)

__all__ = [
    "BISECTION_STEPS",
    "FLOOR_SLACK",
    "LAST",
    "MAX_THRESHOLDS_BYTES",
    "NEVER",
    "R_HIGH",
    "R_LOW",
    "SWEEP",
    "THRESHOLD_KEYS",
    "apply_thresholds",
    "average_flops",
    "calibrate_thresholds",
    "check_budget",
    "descending",
    "exit_fractions",
    "exit_proportions",
    "exits_taken",
    "expected_cost",
    "load_thresholds",
    "max_softmax",
    "softmax",
    "thresholds_for_budget",
    "write_thresholds",
]
