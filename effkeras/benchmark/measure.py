"""Timing: the one interleaved timer of the project, and one inference of a .tflite file in the
runtime of its target (`effkeras.deploy.runtime`'s protocol).

Files (or any zero-argument functions) take turns: warm-up rounds, then round after round, each
round one call of every function in turn, so that a slow spell of a shared machine falls on
all of them alike; median and quartiles per function.
"""

import time

import numpy as np

RUNTIMES = {
    "arm": "lce",
    "float": "litert",
    "float16": "litert",
    "int8": "litert",
    "tflm": "tflm",
}  # ethos-u*: "vela" (an estimate, not run)
CPU_TARGETS = ("arm", "float", "float16", "int8")  # the files a phone or a Pi runs


def time_interleaved(runners, *, runs, warmup, progress=True):
    """Times zero-argument functions taking turns.

    Args:
        runners: {key: zero-argument function}.
        runs: timed rounds; each calls every function once, in turn.
        warmup: untimed rounds first.
        progress: show a progress bar over the rounds.

    Returns:
        {key: [ms of each timed call]}.
    """
    from tqdm import tqdm

    for _ in range(warmup):
        for run in runners.values():
            run()
    times = {key: [] for key in runners}
    for _ in tqdm(range(runs), desc="timing (interleaved)", unit="round", disable=not progress):
        for key, run in runners.items():
            start = time.perf_counter()
            run()
            times[key].append(1e3 * (time.perf_counter() - start))
    return times


def quartiles(times_ms):
    """The median and quartiles of timings.

    Args:
        times_ms: a list of times (ms).

    Returns:
        (median, 25th percentile, 75th percentile) as floats.
    """
    ms = np.array(times_ms)
    p25, p75 = (float(v) for v in np.percentile(ms, [25, 75]))
    return float(np.median(ms)), p25, p75


def inference(flatbuffer, target, threads=1):
    """One inference of a .tflite file on a fixed input, in the runtime of `target`.

    The input is uniform random pixels in [0, 255] (seeded), encoded once. An early-exit file
    runs every stage, as when no exit is confident.

    Args:
        flatbuffer: the file's bytes.
        target: the deploy target the file was made for (a key of `RUNTIMES`).
        threads: interpreter threads (LiteRT and LCE).

    Returns:
        A zero-argument function running one inference.

    Raises:
        InputError: the file holds LCE ops but `target` is not "arm".
    """
    from effkeras.deploy import early_exit, runtime
    from effkeras.deploy.flatbuffer import io_tensors

    inputs, _ = io_tensors(flatbuffer)
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 255, (1, *t.shape[1:])).astype(np.float32) for t in inputs]
    if early_exit.is_early_exit_file(flatbuffer):  # every stage, as when no exit is confident
        stages = early_exit.Runner(flatbuffer, runtime="tflm" if target == "tflm" else "litert")
        return lambda: stages.exit_outputs(images)
    run = runtime.runner(flatbuffer, RUNTIMES[target], num_threads=threads)
    encoded = run.encode([x[0] for x in images])
    return lambda: run.run_one(encoded)


def time_rows(rows, flatbuffers, *, threads=1, runs=20, warmup=3, progress=True):
    """Times the files of `rows` together and sets their latencies.

    Each row whose file a runtime here runs (targets of `RUNTIMES`) gets `median_ms`, `p25_ms`,
    `p75_ms` and `inferences_per_second`; a row whose file cannot be run gets `error`.

    Args:
        rows: `Row`s.
        flatbuffers: {id(row): the row's file bytes}, for the rows that have a file.
        threads: interpreter threads.
        runs: timed rounds (0: nothing is timed).
        warmup: untimed rounds first.
        progress: show a progress bar.
    """
    from effkeras.benchmark.report import one_line

    runners = {}
    for row in rows:  # runs=0: the deterministic figures only (sizes, arenas, Vela)
        if runs and id(row) in flatbuffers and row.target in RUNTIMES:
            try:
                runners[id(row)] = inference(flatbuffers[id(row)], row.target, threads)
            except Exception as error:  # noqa: BLE001
                row.error = one_line(error)
    if not runners:
        return
    times = time_interleaved(runners, runs=runs, warmup=warmup, progress=progress)
    for row in rows:
        if id(row) in times:
            row.median_ms, row.p25_ms, row.p75_ms = quartiles(times[id(row)])
            row.inferences_per_second = 1e3 / row.median_ms
