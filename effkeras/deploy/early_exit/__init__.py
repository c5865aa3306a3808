"""Early-exit deployment: a multi-exit network as K stages, one per exit, run until confident.

An early-exit network (RANet, Yang et al., CVPR 2020, arXiv 2003.07326; MSDNet, arXiv
1703.09844) returns K logits, exit1 ... exitK, each deeper and costlier than the last. At
inference time an image stops at the first exit whose softmax maximum reaches that exit's
threshold (RANet §3.4, "budgeted batch classification"), so the file must let an app run the
network exit by exit:

    stages.py       split_stages: K Keras models calling the trained model's own layers, each
                    computing what its exit needs that no earlier exit needed; run_stages;
                    the SavedModel with one signature per stage
    description.py  the description the file carries as TFLite metadata "effkeras_early_exit"
                    (stages, the tensors each reads and hands on, cumulative FLOPs,
                    thresholds), the tflm stage files, the app-facing fields
    runner.py       Runner: a file run stage by stage (LiteRT, or TFLite Micro) until an exit
                    is confident, its thresholds calibrated on the file's own confidences
    convert.py      convert: float, float16, int8 (one file, a signature per stage), tflm (a
                    file per stage, each checked in TFLite Micro) and ethos-u* (each stage
                    compiled by Vela), verified against Keras

The exit logic (thresholds, exits taken, the thresholds file) is effkeras.early_exit's.
"""

from effkeras.deploy.early_exit.convert import TARGETS, convert, has_form
from effkeras.deploy.early_exit.description import (
    FORMAT,
    METADATA_NAME,
    RULE,
    app_fields,
    describe,
    description,
    is_early_exit_file,
    stage_files,
    with_description,
)
from effkeras.deploy.early_exit.runner import Decisions, Runner
from effkeras.deploy.early_exit.stages import (
    SIGNATURE,
    check_multi_exit,
    export_stages,
    run_stages,
    split_stages,
    stage_number,
)

__all__ = [
    "FORMAT",
    "METADATA_NAME",
    "RULE",
    "SIGNATURE",
    "TARGETS",
    "Decisions",
    "Runner",
    "app_fields",
    "check_multi_exit",
    "convert",
    "describe",
    "description",
    "export_stages",
    "has_form",
    "is_early_exit_file",
    "run_stages",
    "split_stages",
    "stage_files",
    "stage_number",
    "with_description",
]
