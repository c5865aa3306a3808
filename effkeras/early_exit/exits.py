"""Which exit a sample leaves at: confidence, thresholds, exits taken and their cost.

A sample leaves an early-exit network (RANet, Yang et al., CVPR 2020, arXiv 2003.07326, §3.4)
at the first exit k whose confidence, the largest softmax probability (float32), reaches the
threshold t_k; the last exit answers the rest (t_K = 0). The thresholds are calibrated so that
given fractions pi_k of a validation set leave at each exit, following the official code's
geometric family pi_k = r^k / sum_j r^j (MSDNet's protocol, Huang et al., ICLR 2018, arXiv
1703.09844, §5); a requested average cost is met by bisection over r.

Everything here works on NumPy arrays: (K, N) confidences of K exits on N samples. Evaluation
(effkeras.evaluation.early_exit) and the deployed runner (effkeras.deploy.early_exit) share it.
"""

import math

import numpy as np

from effkeras.errors import InputError

NEVER = 1e8  # a threshold above any softmax: nobody leaves at that exit (the official code's value)
LAST = 0.0  # the last exit's threshold: it answers whatever its confidence
SWEEP = tuple(p / 20 for p in range(1, 40))  # r = 0.05 ... 1.95, the official code's 39 points
# Bisection over log r between these ends: 1 + 1e-17 == 1 in float64, so at the low end every
# validation sample leaves at the first exit and at the high end every one at the last.
R_LOW, R_HIGH = 1e-17, 1e17
BISECTION_STEPS = 80  # halvings of the log-r interval (78 wide): far below any step of the cost
# floor(N * pi_k) of a product that is an integer in exact arithmetic but lands an ulp below it
# in floating point would take one sample too few.
FLOOR_SLACK = 1e-9


def softmax(logits):
    """Softmax over the last axis, in float32 (the confidence the thresholds compare with).

    Args:
        logits: array (..., classes).

    Returns:
        A float32 array of the same shape.
    """
    logits = np.asarray(logits, np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def max_softmax(logits):
    """The largest softmax probability of each row, in float32 as the official code.

    Args:
        logits: array (..., classes).

    Returns:
        A float32 array (...): the confidence of each row.
    """
    return softmax(logits).max(axis=-1)


def exit_proportions(r, num_exits):
    """Target fractions pi_k = r^k / sum_j r^j (k = 1..num_exits) of the samples that leave at
    each exit: r < 1 favours early exits, r = 1 is uniform, r > 1 favours late ones.

    Args:
        r: the ratio, a positive number.
        num_exits: K.

    Returns:
        A float64 array (K,) that sums to 1.

    Raises:
        ValueError: r is not positive.
    """
    if not r > 0:
        raise ValueError(f"r must be positive, got {r!r}")
    logs = np.arange(1, num_exits + 1) * math.log(r)  # log space: r far from 1 stays finite
    weights = np.exp(logs - logs.max())
    return weights / weights.sum()


def descending(confidence):
    """Per exit, the samples in order of decreasing confidence (reused across calibrations).

    Args:
        confidence: (K, N) confidences.

    Returns:
        An int array (K, N) of sample indices.
    """
    return np.argsort(-np.asarray(confidence), axis=1, kind="stable")


def calibrate_thresholds(confidence, proportions, orders=None):
    """Thresholds (K,) that make fractions `proportions` of the samples leave at each exit.

    For k = 1..K-1, with m_k = floor(N pi_k): walk the samples that have not left yet in order
    of decreasing confidence at exit k; t_k is the m_k-th one's confidence (NEVER when m_k is 0
    or fewer remain), and every sample with confidence >= t_k leaves (ties can take more than
    m_k). t_K = LAST. The official code's procedure, exactly.

    Args:
        confidence: (K, N) largest softmax probability of each exit for each validation sample.
        proportions: (K,) target fractions (`exit_proportions`).
        orders: `descending(confidence)`, when already computed.

    Returns:
        A float64 array (K,) of thresholds.
    """
    confidence = np.asarray(confidence)
    num_exits, count = confidence.shape
    orders = descending(confidence) if orders is None else orders
    thresholds = np.full(num_exits, NEVER)
    left = np.zeros(count, bool)
    for k in range(num_exits - 1):
        take = math.floor(count * proportions[k] + FLOOR_SLACK)
        if take > 0:
            waiting = orders[k][~left[orders[k]]]
            if len(waiting) >= take:
                thresholds[k] = float(confidence[k, waiting[take - 1]])
        left |= confidence[k] >= thresholds[k]
    thresholds[-1] = LAST
    return thresholds


def exits_taken(confidence, thresholds):
    """The exit each sample leaves at: the first k with confidence >= t_k, else the last.

    Args:
        confidence: (K, N) confidences.
        thresholds: (K,) thresholds.

    Returns:
        An int array (N,) of 0-based exit indices.
    """
    passes = np.asarray(confidence) >= np.asarray(thresholds, np.float64)[:, None]
    passes[-1] = True
    return np.argmax(passes, axis=0)


def exit_fractions(exits, num_exits):
    """The fraction of the samples that leave at each exit.

    Args:
        exits: (N,) 0-based exits taken (`exits_taken`).
        num_exits: K.

    Returns:
        A float64 array (K,).
    """
    return np.bincount(exits, minlength=num_exits) / len(exits)


def expected_cost(fractions, exit_flops):
    """The average cost per sample of exit `fractions`.

    Args:
        fractions: (K,) fraction of the samples leaving at each exit.
        exit_flops: (K,) cumulative FLOPs up to each exit.

    Returns:
        The average FLOPs per sample, a float.
    """
    return float(np.asarray(fractions, np.float64) @ np.asarray(exit_flops, np.float64))


def apply_thresholds(confidence, correct, thresholds, exit_flops):
    """What `thresholds` give on samples: exit fractions, accuracy and average cost.

    Args:
        confidence: (K, N) confidences.
        correct: (K, N) bool, whether exit k's top-1 is right.
        thresholds: (K,) thresholds.
        exit_flops: (K,) cumulative FLOPs up to each exit.

    Returns:
        {"exit_fractions": the fraction leaving at each exit, "top1": accuracy at the exits
        taken, "flops": the average cumulative FLOPs of the exits taken}.
    """
    exits = exits_taken(confidence, thresholds)
    count = len(exits)
    fractions = exit_fractions(exits, len(thresholds))
    top1 = float(np.mean(np.asarray(correct)[exits, np.arange(count)]))
    return {
        "exit_fractions": fractions.tolist(),
        "top1": top1,
        "flops": expected_cost(fractions, exit_flops),
    }


def average_flops(confidence, thresholds, exit_flops):
    """The average cumulative FLOPs of the exits that `thresholds` make samples take.

    Args:
        confidence: (K, N) confidences.
        thresholds: (K,) thresholds.
        exit_flops: (K,) cumulative FLOPs up to each exit.

    Returns:
        A float.
    """
    exits = exits_taken(confidence, thresholds)
    return float(np.mean(np.asarray(exit_flops, np.float64)[exits]))


def check_budget(budget, exit_flops):
    """Checks that `budget` covers at least the first exit's cost.

    Args:
        budget: average FLOPs per image.
        exit_flops: (K,) cumulative FLOPs up to each exit.

    Raises:
        InputError: the budget is below the first exit's cost.
    """
    if not budget >= exit_flops[0]:
        raise InputError(
            f"--budget={budget:,.0f} FLOPs is below the first exit's cost: every "
            f"image costs at least {int(exit_flops[0]):,} FLOPs; the minimum budget "
            f"is {int(exit_flops[0])}"
        )


def thresholds_for_budget(confidence, exit_flops, budget, orders=None):
    """The largest r (found by bisection) whose thresholds, calibrated on the validation
    `confidence`, spend at most `budget` FLOPs per sample on average there.

    The cost moves in steps of about one sample changing exit, so it lands within
    (F_K - F_1) / N of the budget (ties of confidence can make a step larger). A budget of at
    least the last exit's cost sends everyone there (r None).

    Args:
        confidence: (K, N) validation confidences.
        exit_flops: (K,) cumulative FLOPs up to each exit.
        budget: average FLOPs per sample.
        orders: `descending(confidence)`, when already computed.

    Returns:
        (r, thresholds (K,)).

    Raises:
        InputError: the budget is below the first exit's cost.
    """
    check_budget(budget, exit_flops)
    flops = np.asarray(exit_flops, np.float64)
    num_exits = len(flops)
    if budget >= flops[-1]:
        return None, np.array([NEVER] * (num_exits - 1) + [LAST])
    orders = descending(confidence) if orders is None else orders

    def thresholds_at(log_r):
        return calibrate_thresholds(
            confidence, exit_proportions(math.exp(log_r), num_exits), orders
        )

    low, high = math.log(R_LOW), math.log(R_HIGH)
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        if average_flops(confidence, thresholds_at(middle), flops) <= budget:
            low = middle
        else:
            high = middle
    return math.exp(low), thresholds_at(low)
