"""What a training run is asked to do (TrainConfig, one field per apps.train flag), and the check
that refuses a flag that cannot be right before anything is read or written."""

import dataclasses
import math
import numbers

from effkeras import data
from effkeras.errors import InputError
from effkeras.fileio import check_writable
from effkeras.training import recipes
from effkeras.training.rundir import is_int

MAX_SEED = 2**31 - 1  # numpy seeds must be < 2**32; the data seed adds the epoch


@dataclasses.dataclass
class TrainConfig:
    """One training run, as apps.train's flags give it; None fields take the recipe's value.

    Args:
        model: registry name (effkeras.models); with `qat`/`finetune` it defaults to the
            registry name of the model in `init_from`.
        output_dir: the run directory (effkeras.training.rundir); a run already there resumes.
        dataset: a name in effkeras.data.DATASETS.
        data_dir: where the dataset's files are (Fashion-MNIST defaults to the Debian package).
        epochs: total epochs (None: the recipe's).
        batch_size: the global batch (None: the recipe's), split over the replicas.
        learning_rate: the peak rate (None: the recipe's, scaled with the batch size).
        steps_per_epoch: None: one pass over the train split.
        input_shape: (height, width, channels); None: a resumed run's own, else
            effkeras.training.plan.default_input_shape.
        seed: the random seed, in [0, MAX_SEED].
        teacher: a .keras file or registry name, for recipes that distil.
        validation_size: training examples held out (data's `validation` split, the same in
            every run): early-exit thresholds are calibrated on them (apps.evaluate
            --early_exit=budgeted, same size).
        transfer_epochs: two-stage recipes: knowledge-transfer epochs per block (None: the
            recipe's; 0: none).
        qat: int8 quantization-aware training of the trained float model in `init_from` (a
            .keras file), with the recipe's qat_stage.
        finetune: the same run without quantization, the control that QAT's gain is measured
            against.
        init_from: the trained float model that `qat` or `finetune` starts from.
        verbose: Keras' fit verbosity (None: progress bars on a terminal, one line per epoch
            otherwise).
        strategy: the tf.distribute strategy's name (effkeras.training.distribute.STRATEGIES).
        cluster_timeout: multi_worker: seconds to wait for every task of TF_CONFIG (None:
            distribute.CLUSTER_TIMEOUT, 600).
        cpu_devices: logical CPU devices to split this machine's CPU into (multi-replica runs
            without GPUs).
        grad_accumulation: apply the mean gradient of this many batches (None: 1).
        dtype_policy: None: the recipe's (mixed_float16 on a GPU for mixed recipes).
        jit_compile: True/False: XLA or not; "auto": Keras' choice.
        run_eagerly: run every step op by op, as Keras' compile(run_eagerly=True): no tracing
            (seconds per model), slower steps; for debugging and for runs of a few steps.
        deterministic: TensorFlow's deterministic ops: reruns give the same losses.
    """

    model: str
    output_dir: str
    dataset: str = "fashion_mnist"
    data_dir: str = None
    epochs: int = None
    batch_size: int = None
    learning_rate: float = None
    steps_per_epoch: int = None
    input_shape: tuple = None
    seed: int = 0
    teacher: str = None
    validation_size: int = None
    transfer_epochs: int = None
    qat: bool = False
    finetune: bool = False
    init_from: str = None
    verbose: int = None
    strategy: str = "default"
    cpu_devices: int = None
    cluster_timeout: float = None
    grad_accumulation: int = None
    dtype_policy: str = None
    jit_compile: object = "auto"
    run_eagerly: bool = False
    deterministic: bool = False


def _check_positive(name, value):
    if value is not None and (not is_int(value) or value < 1):
        raise InputError(f"--{name} must be a positive integer, got {value!r}")


def check_config(config, recipe):
    """Refuses any flag of `config` that cannot be right, before anything is read or written.

    Args:
        config: the run's TrainConfig.
        recipe: the Recipe the run trains with (a QAT or fine-tuning run: its qat_stage).

    Raises:
        InputError: naming the flag and what to give instead.
    """
    for name in ("epochs", "batch_size", "steps_per_epoch", "validation_size", "grad_accumulation"):
        _check_positive(name, getattr(config, name))
    recipes.dtype_policy(recipe, config.dtype_policy)  # InputError for one this machine lacks
    if config.jit_compile not in ("auto", True, False):
        raise InputError(f"--jit_compile must be auto, true or false, got {config.jit_compile!r}")
    if config.run_eagerly and config.jit_compile is True:
        raise InputError("--run_eagerly runs op by op, --jit_compile=true compiles: choose one")
    rate = config.learning_rate
    if rate is not None and (
        isinstance(rate, bool)
        or not isinstance(rate, numbers.Real)
        or not math.isfinite(rate)
        or rate <= 0
    ):
        raise InputError(
            f"--learning_rate must be a finite number > 0, got {rate!r}; leave it out "
            f"for the recipe's ({recipe.learning_rate:g} at batch "
            f"{recipe.base_batch_size}, scaled with the batch size)"
        )
    if not is_int(config.seed) or not 0 <= config.seed <= MAX_SEED:
        raise InputError(f"--seed must be an integer in [0, {MAX_SEED}], got {config.seed!r}")
    if config.verbose not in (None, 0, 1, 2):
        raise InputError(f"verbose must be 0, 1 or 2, got {config.verbose!r}")
    if config.dataset not in data.DATASETS:
        raise InputError(
            f"unknown dataset {config.dataset!r}; choose from {', '.join(data.names())}"
        )
    if not config.output_dir or not isinstance(config.output_dir, str):
        raise InputError(f"--output_dir must be a directory path, got {config.output_dir!r}")
    check_writable(config.output_dir, "--output_dir", directory=True)
    if config.transfer_epochs is not None and (
        not is_int(config.transfer_epochs) or config.transfer_epochs < 0
    ):
        raise InputError(
            f"--transfer_epochs must be an integer >= 0, got {config.transfer_epochs!r}"
        )
    if config.transfer_epochs and recipe.transfer is None:
        raise InputError(
            f"--transfer_epochs is for two-stage recipes (knowledge transfer, then "
            f"distillation); {config.model}'s recipe has one stage: leave it out"
        )
    if config.init_from and not (config.qat or config.finetune):
        raise InputError(
            "--init_from is the trained float model that --qat (or --finetune) "
            "starts from: add one of them"
        )
    if (config.qat or config.finetune) and (config.teacher or config.transfer_epochs):
        raise InputError(
            "--qat and --finetune fine-tune a trained model on labels: leave "
            "--teacher and --transfer_epochs out"
        )
    if config.teacher and not recipe.loss.needs_teacher:
        raise InputError(
            f"--teacher is only for recipes that distil; {config.model}'s recipe "
            f"does not: leave --teacher out"
        )
