"""Training stages: what one run trains and how, as small objects the trainer runs alike.

  Scratch       the registry model, from its initializers, on the recipe's labels
  Distillation  the same inside a Distiller: the teacher's softmax is the target (a recipe whose
                loss distils; stage 2 of a two-stage recipe starts from the transferred student)
  Transfer      stage 1 of a two-stage recipe: blockwise knowledge transfer from the teacher
                (FeatureTransfer, LERP-PSA's), with its own recipe (Recipe.transfer_stage)
  FineTune      a trained float model (--init_from) trained on with the recipe's qat_stage
  Qat           the same after effkeras.qat.quantize_model, its ranges first calibrated

A stage builds its models under the strategy in one scope (`build`), prepares them once the
data is read (`prepare`), compiles them (`compile`), adds its callbacks and test metrics, and
says what model.keras holds (`saveable`). `make_stages` picks a run's stages from its flags.
"""

import dataclasses
import os

import keras

from effkeras import models
from effkeras.errors import InputError
from effkeras.training import recipes
from effkeras.training.distillation import Distiller, load_teacher
from effkeras.training.rundir import log, shape_text
from effkeras.training.transfer import BlockSchedule, FeatureTransfer, block_names

QAT_CALIBRATION_IMAGES = 512  # training images that set a QAT run's first activation ranges


@dataclasses.dataclass
class Built:
    """The models of one run.

    Attributes:
        student: the model that trains and that model.keras holds.
        teacher: the frozen teacher (None when the stage has none).
        model: what fit trains: the student, or a Distiller or FeatureTransfer around it.
        recipe: the recipe this run trains with (a Transfer stage's own).
        num_classes: the classes the student predicts.
    """

    student: keras.Model
    teacher: keras.Model
    model: keras.Model
    recipe: recipes.Recipe
    num_classes: int


def build_registry_model(info, input_shape, num_classes, policy="float32"):
    """The registry model under a dtype policy.

    Under mixed precision its output layers (the logits) compute in float32, as the loss, its
    softmax and the metrics do.

    Args:
        info: the model's registry entry (effkeras.models.info).
        input_shape: (height, width, channels).
        num_classes: the classes it predicts.
        policy: a Keras dtype policy (effkeras.training.recipes.DTYPE_POLICIES).

    Returns:
        A new, untrained keras.Model.
    """
    keras.config.set_dtype_policy(policy)
    try:
        model = models.get(info.name, input_shape=input_shape, num_classes=num_classes)
    finally:
        keras.config.set_dtype_policy("float32")
    if policy != "float32":
        for output in model.outputs:
            output._keras_history.operation.dtype_policy = "float32"
    return model


def _test_metrics(logs, num_outputs):
    """Today's {top1, top5, loss} for one output; every logged metric for several."""
    if num_outputs == 1:
        return {"top1": logs["top1"], "top5": logs["top5"], "loss": logs["loss"]}
    return {name: float(value) for name, value in logs.items()}


class Stage:
    """A training run: by default, of the registry model from scratch on the recipe's loss.

    Args:
        config: the run's TrainConfig (its output_dir is this run's).
        info: the model's registry entry (effkeras.models.info).
        recipe: the recipe it trains with.
    """

    name = "scratch"
    banner = None  # a line the trainer prints before the run (the stages of a two-stage recipe)

    def __init__(self, config, info, recipe):
        self.config, self.info, self.recipe = config, info, recipe

    # --- the plan --------------------------------------------------------------------------

    def dtype_policy(self):
        """The dtype policy its model is built under (--dtype_policy, else the recipe's)."""
        return recipes.dtype_policy(self.recipe, self.config.dtype_policy)

    def input_shape(self):
        """(input shape, why) when the stage fixes it; None: the plan's usual choice."""
        return None

    def identity(self):
        """What the stage adds to the run's identity in state.json."""
        return {}

    def epochs(self, recipe):
        """The epochs the run trains: --epochs, else the recipe's."""
        return self.config.epochs or recipe.epochs

    # --- the models ------------------------------------------------------------------------

    def build(self, plan, num_classes, strategy):
        """The run's models, made under `strategy`.

        Args:
            plan: the RunPlan (input shape, dtype policy).
            num_classes: the classes the student predicts.
            strategy: the tf.distribute strategy.

        Returns:
            A Built.

        Raises:
            InputError: the teacher or the trained model does not fit the run.
        """
        with strategy.scope():
            student = self.student(plan.input_shape, num_classes, plan.dtype_policy)
            teacher = (
                load_teacher(self.config.teacher, plan.input_shape, num_classes)
                if self.recipe.loss.needs_teacher
                else None
            )
            recipe = self.run_recipe(student)
            model = self.wrap(student, teacher, recipe)
        return Built(student, teacher, model, recipe, num_classes)

    def student(self, input_shape, num_classes, policy):
        return build_registry_model(self.info, input_shape, num_classes, policy)

    def run_recipe(self, student):
        return self.recipe

    def wrap(self, student, teacher, recipe):
        """What fit trains around the student."""
        return student

    def prepare(self, built, train_split, fresh):
        """Readies the models once the data is read; `fresh`: the run starts (not a resume)."""

    # --- compile, fit and save -------------------------------------------------------------

    def compile(self, built, plan):
        """Compiles built.model with its recipe's optimizer, schedule, loss and metrics."""
        config = self.config
        recipes.compile_model(
            built.model,
            built.recipe,
            epochs=plan.epochs,
            steps_per_epoch=plan.steps_per_epoch,
            batch_size=plan.update_batch,
            learning_rate=config.learning_rate,
            accumulation=plan.accumulation,
            jit_compile=config.jit_compile,
            run_eagerly=config.run_eagerly,
        )

    def callbacks(self, built, plan):
        """Callbacks of the stage itself, after the recipe's."""
        return []

    def trained(self, built):
        """Readies the trained student for its final evaluation and model.keras."""

    def test_metrics(self, logs, num_outputs):
        """metrics.json's `test` from evaluate's logs."""
        return _test_metrics(logs, num_outputs)

    def saveable(self, student, policy):
        """The model to write as model.keras: float32 (rebuilt with the trained weights) when it
        trained under mixed precision, with per-replica BatchNormalization statistics again."""
        if policy != "float32":
            trained = student
            student = build_registry_model(
                self.info, tuple(trained.input_shape[1:]), trained.output_shape[-1]
            )
            student.set_weights(trained.get_weights())
        for layer in student._flatten_layers(include_self=False):
            if getattr(layer, "synchronized", False):
                layer.synchronized = False
        return student


class Scratch(Stage):
    """The registry model, from its initializers, on the recipe's labels."""


class Distillation(Stage):
    """The student inside a Distiller, learning the teacher's softmax (the recipe's loss).

    Args:
        config, info, recipe: as Stage's.
        initial: a .keras file whose weights a fresh run starts from (the transferred student
            of a two-stage recipe); None: the initializers'.
    """

    name = "distillation"

    def __init__(self, config, info, recipe, initial=None):
        super().__init__(config, info, recipe)
        self.initial = initial
        if initial is not None:
            self.banner = f"stage 2 of 2: distillation, in {config.output_dir}"

    def wrap(self, student, teacher, recipe):
        loss = recipe.loss
        return Distiller(
            student,
            teacher,
            alpha=loss.alpha,
            temperature=loss.temperature,
            label_smoothing=loss.label_smoothing,
        )

    def prepare(self, built, train_split, fresh):
        if self.initial is not None and fresh:
            from effkeras import saving

            built.student.set_weights(saving.load_model(self.initial).get_weights())
            log(f"starting from the transferred student, {self.initial}")


class Transfer(Stage):
    """Stage 1 of a two-stage recipe: blockwise knowledge transfer, in float32, with the
    recipe's Transfer as a recipe of its own (blocks x --transfer_epochs epochs)."""

    name = "transfer"

    def __init__(self, config, info, recipe):
        super().__init__(config, info, recipe)
        self.banner = f"stage 1 of 2: knowledge transfer from the teacher, in {config.output_dir}"

    def dtype_policy(self):
        super().dtype_policy()  # InputError for a policy this machine lacks
        return "float32"  # feature matching in float32

    def epochs(self, recipe):
        return recipe.epochs

    def run_recipe(self, student):
        return self.recipe.transfer_stage(len(block_names(student)), self.config.transfer_epochs)

    def wrap(self, student, teacher, recipe):
        model = FeatureTransfer(student, teacher)
        model.copy_stem()
        return model

    def compile(self, built, plan):
        recipe = built.recipe
        built.model.compile(
            recipes.make_optimizer(
                recipe,
                recipes.learning_rate_schedule(
                    recipe,
                    epochs=plan.epochs,
                    steps_per_epoch=plan.steps_per_epoch,
                    batch_size=plan.batch_size,
                ),
            ),
            run_eagerly=self.config.run_eagerly,
        )

    def callbacks(self, built, plan):
        return [BlockSchedule(plan.epochs // len(built.model.blocks), print_fn=log)]

    def test_metrics(self, logs, num_outputs):
        return {"loss": logs["loss"]}


class FineTune(Stage):
    """A trained float model trained on in float32 with the recipe's qat_stage: the control
    that QAT is compared with.

    Args:
        config, info: as Stage's.
        recipe: the recipe's qat_stage.
        float_model: the trained float model (--init_from).
    """

    name = "finetune"
    quantize = False

    def __init__(self, config, info, recipe, float_model):
        super().__init__(config, info, recipe)
        self.float_model = float_model

    def dtype_policy(self):
        super().dtype_policy()
        return "float32"  # fine-tuning a float32 model

    def input_shape(self):
        config = self.config
        shape = tuple(self.float_model.input_shape[1:])
        if config.input_shape and tuple(config.input_shape) != shape:
            raise InputError(
                f"{config.init_from} takes input {shape_text(shape)}: leave --input_shape out"
            )
        return shape, f"the float model's, {config.init_from}"

    def identity(self):
        return {"init_from": os.path.abspath(self.config.init_from), "qat": self.quantize}

    def student(self, input_shape, num_classes, policy):
        predicts = self.float_model.output_shape[-1]
        if predicts != num_classes:
            raise InputError(
                f"{self.config.init_from} has {predicts} classes, "
                f"{self.config.dataset} {num_classes}: fine-tune it on its own "
                f"dataset"
            )
        return self.float_model


class Qat(FineTune):
    """int8 quantization-aware training of a trained float model (effkeras.qat), its
    activation ranges first calibrated on QAT_CALIBRATION_IMAGES training images."""

    name = "qat"
    quantize = True

    def student(self, input_shape, num_classes, policy):
        from effkeras import qat

        return qat.quantize_model(super().student(input_shape, num_classes, policy))

    def trained(self, built):
        """Makes the model.keras written, and evaluated, compute what its int8 file does: the
        folded biases go onto the file's bias grid (qat.snap_biases: a bias off the grid
        shifts a channel by a fraction of an output step, which flips roundings throughout the
        net), and each hard-swish computes TFLite's fixed-point int8 kernel on its grids
        (qat.freeze_hard_swish). On 1,000 Fashion-MNIST test images, the top-1 agreement with
        the int8 file in LiteRT went from 99.5% to 99.9% for a QAT ResNet-20 and from 99.6% to
        100% for a ResNet-8 (biases), and with MediaPipe from 95.5% to 99.2% for a QAT RAN-e
        (hard-swish)."""
        from effkeras import qat

        qat.snap_biases(built.student)
        qat.freeze_hard_swish(built.student)

    def prepare(self, built, train_split, fresh):
        from effkeras import qat

        if fresh:
            images = calibration_images(train_split.dataset)
            qat.calibrate(built.student, images)
            log(
                f"int8 QAT of {self.config.init_from}: activation ranges calibrated on "
                f"{len(images)} training images"
            )


def calibration_images(dataset, count=QAT_CALIBRATION_IMAGES):
    """Up to `count` images from the (images, labels) batches of `dataset`, as one array."""
    import numpy as np

    images, total = [], 0
    for batch, _ in dataset:
        images.append(batch.numpy())
        total += len(images[-1])
        if total >= count:
            break
    return np.concatenate(images)[:count]


def load_float_model(config):
    """The trained float model --qat (or --finetune) starts from (config.init_from).

    Args:
        config: the run's TrainConfig.

    Returns:
        The loaded keras.Model.

    Raises:
        InputError: no --init_from, an unreadable file, a QAT model, a model that is not in
            the registry when --model does not name one, or a registry model other than
            --model.
    """
    from effkeras import qat, saving

    if not config.init_from:
        raise InputError(
            f"--{'qat' if config.qat else 'finetune'} needs "
            f"--init_from=FLOAT_MODEL.keras, the trained float model to fine-tune"
        )
    model = saving.load_model(config.init_from)
    if qat.is_qat_model(model):
        raise InputError(
            f"{config.init_from} is already a QAT model: give the float model it "
            f"came from, or resume its run with its --output_dir"
        )
    if config.model is None and model.name not in models.names():
        raise InputError(
            f"{config.init_from} holds {model.name!r}, not a registry model: give "
            f"--model=<registry name> whose recipe to fine-tune with"
        )
    if (
        config.model is not None
        and model.name in models.names()
        and model.name != models.info(config.model).name
    ):
        raise InputError(
            f"--model={config.model}, but {config.init_from} holds {model.name}: leave --model "
            f"out (the run trains the model in --init_from) or give a {config.model} file"
        )
    return model


def make_stages(config, strategy):
    """The stages a run's flags ask for, in the order they run.

    Args:
        config: the run's TrainConfig.
        strategy: the tf.distribute strategy (the float model of --qat/--finetune loads under
            it).

    Returns:
        A list of Stages: one, or a Transfer into <output_dir>/transfer then a Distillation
        from its model.keras for a two-stage recipe (unless --transfer_epochs=0).

    Raises:
        InputError: an unknown model, or a bad --init_from.
    """
    if config.qat or config.finetune:
        with strategy.scope():
            float_model = load_float_model(config)
        config = dataclasses.replace(config, model=config.model or float_model.name)
        info = models.info(config.model)
        recipe = recipes.get(info.recipe).qat_stage()
        stage = Qat if config.qat else FineTune
        return [stage(config, info, recipe, float_model)]
    info = models.info(config.model)
    recipe = recipes.get(info.recipe)
    if recipe.transfer is not None and config.transfer_epochs != 0:
        transfer_dir = os.path.join(config.output_dir, "transfer")
        return [
            Transfer(dataclasses.replace(config, output_dir=transfer_dir), info, recipe),
            Distillation(config, info, recipe, initial=os.path.join(transfer_dir, "model.keras")),
        ]
    if recipe.loss.needs_teacher:
        return [Distillation(config, info, recipe)]
    return [Scratch(config, info, recipe)]
