"""Evaluation of Keras models and .tflite files on a dataset split.

    accuracy.py    top-1/top-5 and confusion counts of a Keras model, a callable or a .tflite
                   file (LiteRT, TFLite Micro, LCE), with centre or ten-crop test-time
                   augmentation; its functions are this package's
    early_exit.py  anytime and budgeted-batch evaluation of early-exit networks (RANet, arXiv
                   2003.07326), on the exit logic of effkeras.early_exit; its tables and plots

`from effkeras import evaluation` then `evaluation.evaluate(model, split)`; the early-exit
evaluation is `effkeras.evaluation.early_exit`.
"""

from effkeras.evaluation.accuracy import (
    TTA,
    centre_crop,
    check_classes,
    check_tta,
    evaluate,
    evaluate_checkpoint,
    evaluate_tflite,
    output_names,
    predict_logits,
    ranked_classes,
    with_input_size,
)

__all__ = [
    "TTA",
    "centre_crop",
    "check_classes",
    "check_tta",
    "evaluate",
    "evaluate_checkpoint",
    "evaluate_tflite",
    "output_names",
    "predict_logits",
    "ranked_classes",
    "with_input_size",
]
