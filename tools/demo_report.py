"""Prints the demo's result: test accuracy, training time, per-class recall and, when the run
was converted, the flatbuffer's size, op census and agreement with Keras.

Run by `make demo` (the Makefile's last step) on the demo's run directory; it regenerates no
file in docs/ (it prints what the README's demo section shows)."""

import json
import os
import sys


def main(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(run_dir, "evaluation.json")) as f:
        evaluation = json.load(f)
    print(
        f"\n{metrics['model']} on {metrics['dataset']} {tuple(metrics['input_shape'])}, "
        f"{metrics['epochs']} epochs, {metrics['train_seconds']:.0f} s of training"
    )
    print(
        f"test top-1 {100 * evaluation['top1']:.2f}%   top-5 {100 * evaluation['top5']:.2f}%   "
        f"({evaluation['examples']} images)"
    )
    print("per-class recall:")
    for name, row in zip(evaluation["class_names"], evaluation["confusion"]):
        print(f"  {name:12s} {100 * row[evaluation['class_names'].index(name)] / sum(row):5.1f}%")
    convert_path = os.path.join(run_dir, "convert.json")
    if os.path.exists(convert_path):
        with open(convert_path) as f:
            converted = json.load(f)
        print(
            f"{converted['output']}: {converted['size_bytes']:,} bytes ({converted['target']}), "
            f"max |LCE - Keras| {converted['max_abs_diff']:.2g}"
        )
        census = sorted(converted["op_census"].items())
        print("op census: " + ", ".join(f"{op} {n}" for op, n in census))


if __name__ == "__main__":
    main(sys.argv[1])
