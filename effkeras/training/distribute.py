"""Training on several devices and machines with TensorFlow's own engine, tf.distribute.

Strategies (apps.train --strategy):
  default       one device (the first GPU, else the CPU)
  mirrored      every GPU of this machine, one replica each (tf.distribute.MirroredStrategy)
  multi_worker  every GPU of every machine in the cluster that TF_CONFIG describes, one process
                per machine (tf.distribute.MultiWorkerMirroredStrategy)
  tpu           the TPU that TPUClusterResolver finds (tf.distribute.TPUStrategy)

The batch a run names is the global batch: each step, every replica takes batch / replicas
examples and the gradients are summed across replicas, so the same global batch and seed train
the same model on any number of devices. BatchNormalization is synchronised across replicas
(`synchronized=True`: each step's statistics are those of the global batch), which is what makes
a multi-replica run equal a single-device one (the papers' per-GPU statistics would tie the result
to the GPU count). `cpu_devices` splits this machine's CPU into logical devices, one replica
each: a way to run the multi-replica path without GPUs (tests, a check before a cluster job),
not a way to train faster.

A cluster (multi_worker) shares one output directory (a shared file system): only the chief
(task "chief", else worker 0) writes checkpoints, state.json, TensorBoard logs, model.keras and
metrics.json; every worker reads the same committed epoch on start, so a cluster resumes as one
machine does after any of its processes is killed.

Gradient accumulation across replicas: Keras 3's `gradient_accumulation_steps` branches with a
cond in the replica context, where tf.distribute cannot all-reduce (a RuntimeError about
merge_call); `accumulate_across_replicas` all-reduces each micro-batch's gradients first and takes
the branch in the cross-replica context, with the same arithmetic.
"""

import json
import math
import os
import signal
import socket
import time

import tensorflow as tf

from effkeras.errors import InputError
from effkeras.training.rundir import log

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)


MAX_CPU_DEVICES = 64  # logical CPU devices: replicas to test with, not a real machine's count
CLUSTER_TIMEOUT = 600  # seconds a multi-worker run waits for its cluster (--cluster_timeout)
WAIT_MESSAGE_EVERY = 10  # seconds between "waiting for the cluster" lines


def split_cpu(count):
    """Splits the host CPU into `count` logical devices. Must run before TensorFlow starts its
    runtime (before any op or strategy)."""
    if count is None or count == 1:
        return
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_CPU_DEVICES:
        raise InputError(
            f"--cpu_devices must be an integer from 1 to {MAX_CPU_DEVICES}, got {count!r}"
        )
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:  # TensorFlow already runs: the split is fixed for this process
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise InputError(
                f"--cpu_devices={count}: this process already started TensorFlow "
                f"with {len(tf.config.list_logical_devices('CPU'))} CPU device(s); "
                f"run training in a fresh process"
            ) from None


def read_tf_config():
    """The cluster and task of TF_CONFIG, checked; InputError saying how to write it."""
    text = os.environ.get("TF_CONFIG")
    if not text:
        raise InputError(
            f"--strategy=multi_worker reads the cluster from TF_CONFIG, which is not "
            f"set; on each machine set e.g. {TF_CONFIG_EXAMPLE} (its own index)"
        )
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], task["index"]
        members = cluster[task_type]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"TF_CONFIG must be JSON with a cluster and this process's task, e.g. "
            f"{TF_CONFIG_EXAMPLE}; got {text!r} ({type(e).__name__}: {e})"
        ) from None
    if (
        isinstance(index, bool)
        or not isinstance(index, int)
        or not isinstance(members, list)
        or not 0 <= index < len(members)
    ):
        raise InputError(
            f"TF_CONFIG's task {task!r} is not in its cluster {cluster!r}: the index "
            f"counts from 0 within its task type"
        )
    if task_type not in ("chief", "worker"):
        raise InputError(
            f"TF_CONFIG's task type is {task_type!r}: --strategy=multi_worker runs "
            f"'chief' and 'worker' tasks (parameter servers are not used)"
        )
    return cluster, task


def _address(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_for_cluster(cluster, task, timeout):
    """Returns once every task of TF_CONFIG's cluster is up, in Python, before TensorFlow's
    runtime starts: TensorFlow waits for its cluster inside one C++ call that holds the GIL, so
    a task that never starts would hang the run there silently, deaf to SIGINT and SIGTERM.

    This task listens on its own address's port while it connects to every other's (a peer
    that already went on has TensorFlow's server on that port), says whom it waits for every
    WAIT_MESSAGE_EVERY seconds, stops on SIGINT or SIGTERM as any run does, and gives up after
    `timeout` seconds.

    Raises:
        InputError: this task's port is taken, or a peer did not start within `timeout`.
    """
    me = (task["type"], task["index"])
    peers = {
        f"{kind} {i} at {address}": _address(address)
        for kind, members in cluster.items()
        for i, address in enumerate(members)
        if (kind, i) != me
    }
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    port = _address(cluster[me[0]][me[1]])[1]
    try:
        listener.bind(("", port))
        listener.listen(len(peers) + 1)
    except OSError as e:
        listener.close()
        raise InputError(
            f"cannot listen on port {port}, this task's in TF_CONFIG ({e.strerror}): another "
            f"process holds it; stop it or give this task another port"
        ) from None
    started = last_message = time.monotonic()
    try:
        while peers:
            for name, address in list(peers.items()):
                try:
                    socket.create_connection(address, timeout=1.0).close()
                    del peers[name]
                except OSError:
                    pass
            waited = time.monotonic() - started
            if peers and waited > timeout:
                raise InputError(
                    f"the cluster of TF_CONFIG did not gather within {timeout:g} s (no "
                    f"{', '.join(peers)}): start every task with the same TF_CONFIG cluster "
                    f"(each its own index), or wait longer with --cluster_timeout"
                )
            if peers and time.monotonic() - last_message >= WAIT_MESSAGE_EVERY:
                last_message = time.monotonic()
                log(
                    f"waiting for the cluster ({waited:.0f} s of {timeout:g} s): {', '.join(peers)}"
                )
            if peers:
                time.sleep(0.5)
    finally:
        listener.close()


def make_strategy(name, cpu_devices=None, cluster_timeout=None):
    """The tf.distribute strategy `name` (one of STRATEGIES); a multi-worker run waits up to
    `cluster_timeout` seconds (None: CLUSTER_TIMEOUT) for its cluster (wait_for_cluster)."""
    if cluster_timeout is None:
        cluster_timeout = CLUSTER_TIMEOUT
    if name not in STRATEGIES:
        raise InputError(f"unknown --strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    if name == "multi_worker":
        read_tf_config()  # InputError before any other work
        if not (isinstance(cluster_timeout, (int, float)) and 0 < cluster_timeout < math.inf):
            raise InputError(
                f"--cluster_timeout must be a positive number of seconds, got {cluster_timeout!r}"
            )
    if cpu_devices and cpu_devices > 1 and tf.config.list_physical_devices("GPU"):
        raise InputError(
            "--cpu_devices splits the CPU of a machine without GPUs; this one has "
            "GPUs: leave it out"
        )
    split_cpu(cpu_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus or tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    if name == "multi_worker":
        _mean_scalars_across_workers()
        wait_for_cluster(*read_tf_config(), cluster_timeout)
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        # TensorFlow's runtime catches SIGTERM for preemption notices, and then ignores it: a
        # run stops on SIGTERM as any run does (it resumes from its last checkpoint).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        return strategy
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise InputError(
            f"--strategy=tpu found no TPU ({str(e).splitlines()[0]}); use "
            f"--strategy=mirrored on GPUs"
        ) from None
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this process writes the run's files: always, except on a cluster's non-chief
    workers (the chief is task "chief", else worker 0)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    return (
        resolver.task_type == "worker"
        and resolver.task_id == 0
        and ("chief" not in resolver.cluster_spec().as_dict())
    )


def describe(strategy):
    """One line for the log: the strategy, its replicas and, on a cluster, this task."""
    replicas = strategy.num_replicas_in_sync
    kind = type(strategy).__name__
    if kind == "_DefaultDistributionStrategy":
        return "one device (--strategy=default)"
    text = f"{kind} with {replicas} replica{'s' if replicas > 1 else ''}"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        resolver = strategy.cluster_resolver
        text += (
            f"; this is task {resolver.task_type} {resolver.task_id} of "
            f"{sum(len(v) for v in resolver.cluster_spec().as_dict().values())}"
            f"{' (the chief: it writes the run files)' if is_chief(strategy) else ''}"
        )
    elif hasattr(strategy.extended, "worker_devices"):
        text += f" on {', '.join(strategy.extended.worker_devices)}"
    return text


def synchronize_batch_norm(model):
    """Makes every BatchNormalization of `model` compute its training statistics over the
    global batch (Keras' `synchronized`: an all-reduce per layer under a multi-replica
    strategy; no effect on one device)."""
    import keras

    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
    return model


def accumulate_across_replicas(optimizer):
    """`optimizer` (Keras 3, gradient_accumulation_steps = N) made to accumulate under a
    multi-replica strategy: each micro-batch's gradients are all-reduced, then, in the cross-
    replica context, added to the accumulators or (every N-th step) applied as their mean, with
    the decoupled weight decay first, as Keras does on one device. Its EMA (use_ema) is updated
    every micro-step, as Keras does. Gradient clipping is not applied (no recipe clips)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # under a LossScaleOptimizer
    single_device = inner._backend_apply_gradients

    def apply(grads, trainable_variables):
        context = tf.distribute.get_replica_context()
        if (
            not inner.gradient_accumulation_steps
            or context is None
            or context.num_replicas_in_sync == 1
        ):
            return single_device(grads, trainable_variables)
        steps = inner.gradient_accumulation_steps
        grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        variables = [v.value for v in trainable_variables]
        accumulators = [
            inner._accumulated_gradients[inner._get_variable_index(v)].value
            for v in trainable_variables
        ]

        def merged(distribution, grads):
            rate = inner.learning_rate

            def update(variable, grad, accumulated):
                if inner.weight_decay is not None and inner._use_weight_decay(variable):
                    variable.assign_sub(
                        variable * tf.cast(inner.weight_decay * rate, variable.dtype)
                    )
                inner.update_step((grad + accumulated) / steps, variable, rate)
                return accumulated.assign(tf.zeros_like(accumulated))

            def apply_mean():
                for grad, variable, accumulated in zip(grads, variables, accumulators):
                    distribution.extended.update(
                        variable, update, args=(grad, accumulated), group=False
                    )
                return tf.constant(True)

            def add():
                for grad, accumulated in zip(grads, accumulators):
                    distribution.extended.update(
                        accumulated, lambda a, g: a.assign_add(g), args=(grad,), group=False
                    )
                return tf.constant(False)

            return tf.cond((inner._iterations + 1) % steps == 0, apply_mean, add)

        context.merge_call(merged, args=(grads,))
        if inner.use_ema:
            inner._update_model_variables_moving_average(inner._trainable_variables)

    inner._backend_apply_gradients = apply
    return optimizer


def build_for_fit(model, strategy, dataset):
    """Builds `model`'s metrics, loss and optimizer state from `dataset`'s element spec, under
    `strategy`, before fit.

    Under a strategy, Keras 3's fit and evaluate first take a batch from the distributed
    iterator and average it across replicas to build that state (`_maybe_symbolic_build`); with
    MultiWorkerMirroredStrategy that average fails (a PerReplica cannot become a tensor), and
    everywhere it costs a collective of a whole batch. Built here from shapes alone, the step is
    then skipped.
    """
    if strategy is tf.distribute.get_strategy():  # the default strategy: Keras builds lazily
        return model
    with strategy.scope():
        model._symbolic_build(data_batch=dataset.element_spec)
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    return model


def _mean_scalars_across_workers():
    """Keras 3.15's fit on a cluster averages each step's logs with strategy.reduce("MEAN",
    axis=0), which fails on scalars (a loss, a metric): they are averaged with axis=None here,
    every other reduction is Keras' own."""
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer as keras_trainer

    keras_reduce = keras_trainer.reduce_per_replica
    if getattr(keras_reduce, "scalars_fixed", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction not in ("auto", "mean") or not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy
        ):
            return keras_reduce(values, strategy, reduction)

        def mean(value):
            rank = strategy.experimental_local_results(value)[0].shape.rank
            return strategy.reduce("MEAN", value, axis=None if rank == 0 else 0)

        return tree.map_structure(mean, values)

    reduce_per_replica.scalars_fixed = True
    keras_trainer.reduce_per_replica = reduce_per_replica
