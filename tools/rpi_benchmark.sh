#!/usr/bin/env bash
# Benchmarks .tflite files with LCE's lce_benchmark_model on the device this runs on (a Raspberry
# Pi 4 with a 64-bit OS, or an Android phone through adb shell), and prints a markdown table of
# average latency per thread count. Absolute ARM numbers come from here, not from x86.
#
#   tools/rpi_benchmark.sh [-b ./lce_benchmark_model_aarch64] [-t "1 4"] [-r 50] model.tflite ...
#
# Get lce_benchmark_model from LCE's GitHub releases (lce_benchmark_model_aarch64) or build it:
#   bazel build -c opt --config=aarch64 //larq_compute_engine/tflite/benchmark:lce_benchmark_model
set -euo pipefail

binary=./lce_benchmark_model_aarch64
threads="1 4"
runs=50
while getopts "b:t:r:" option; do
  case $option in
    b) binary=$OPTARG ;;
    t) threads=$OPTARG ;;
    r) runs=$OPTARG ;;
    *) echo "usage: $0 [-b BINARY] [-t \"1 4\"] [-r RUNS] model.tflite ..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -eq 0 ]; then
  echo "usage: $0 [-b BINARY] [-t \"1 4\"] [-r RUNS] model.tflite ..." >&2; exit 2
fi
if [ ! -x "$binary" ]; then
  echo "error: $binary is not an executable lce_benchmark_model; pass it with -b" >&2; exit 2
fi

header="| model | size (bytes)"
rule="|---|---"
for n in $threads; do header="$header | ${n} thread(s), ms"; rule="$rule|---"; done
echo "$header |"; echo "$rule|"
for model in "$@"; do
  row="| $(basename "$model") | $(stat -c %s "$model")"
  for n in $threads; do
    # The benchmark prints "... Inference (avg): <microseconds>"; report milliseconds.
    avg=$("$binary" --graph="$model" --num_threads="$n" --num_runs="$runs" --warmup_runs=5 2>&1 \
          | sed -n 's/.*Inference (avg): \([0-9.e+]*\).*/\1/p' | tail -n 1)
    row="$row | $(awk -v us="${avg:-nan}" 'BEGIN { printf "%.1f", us / 1000 }')"
  done
  echo "$row |"
done
