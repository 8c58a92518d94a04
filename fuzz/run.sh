#!/usr/bin/env bash
# Fuzzes every target for a bounded time: the CI mode of fuzz/ (docs/fuzzing.md).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      (default 30)
#
# Builds all targets once, then runs each for SECONDS_PER_TARGET seconds on a temporary copy
# of its seed corpus (fuzz/corpus/<target>/ is never written), and prints, per target, the
# executions (libFuzzer's stat::number_of_executed_units), executions per second and crashes.
# Exits non-zero when any target crashed, timed out or ran out of memory; the input that did
# it is left in fuzz/artifacts/<target>/, to replay with `cargo fuzz run <target> <file>`.
#
# Environment:
#   FUZZ_JOBS     targets fuzzed at once (default: 2 on a machine of 2 cores or more, else 1)
#   FUZZ_TARGETS  the targets to run, separated by spaces (default: all)
#   FUZZ_TIMEOUT  seconds one input may take before it counts as a crash (default: 15)
set -euo pipefail

seconds=${1:-30}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]: expected a whole number of seconds, got '$seconds'" >&2
    exit 2
fi
cd "$(dirname "$0")"
jobs=${FUZZ_JOBS:-$(( $(nproc) >= 2 ? 2 : 1 ))}
timeout=${FUZZ_TIMEOUT:-15}
# Incremental artifacts are never reused by a fuzz build: they only take disk.
export CARGO_INCREMENTAL=0

# cargo-fuzz runs on nightly; without a nightly toolchain, the default one builds the targets
# too, since no sanitizer (the only nightly-only flag cargo-fuzz passes) is asked for.
toolchain=()
if rustup run nightly rustc --version >/dev/null 2>&1; then
    toolchain=(+nightly)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# No sanitizer: the targets are safe Rust, and AddressSanitizer would halve the executions
# and lengthen the build. Debug assertions on: an integer overflow is a crash.
echo "== building the fuzz targets"
build_started=$SECONDS
cargo "${toolchain[@]}" fuzz build -O --debug-assertions --sanitizer none
echo "== built in $(( SECONDS - build_started ))s"

triple=$(rustc "${toolchain[@]}" -vV | sed -n 's/^host: //p')
bin_dir=target/$triple/release
targets=${FUZZ_TARGETS:-$(cargo "${toolchain[@]}" fuzz list)}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Fuzzes target $1 on a copy of its corpus; writes `target executions exec/s crashes` to
# $work/$1.result and libFuzzer's output to $work/$1.log.
fuzz_one() {
    local target=$1 started=$SECONDS status=0
    mkdir -p "$work/$target.corpus" "artifacts/$target"
    cp -R "corpus/$target/." "$work/$target.corpus/"
    "$bin_dir/$target" "$work/$target.corpus" -max_total_time="$seconds" -timeout="$timeout" \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$target/" \
        >"$work/$target.log" 2>&1 || status=$?
    local elapsed=$(( SECONDS - started )) executions crashes=0
    executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$target.log")
    executions=${executions:-0}
    if [[ $status -ne 0 ]]; then
        crashes=1
    fi
    echo "$target $executions $(( executions / (elapsed > 0 ? elapsed : 1) )) $crashes" >"$work/$target.result"
}

echo "== fuzzing each target for ${seconds}s, $jobs at a time"
running=0
for target in $targets; do
    if [[ ! -x $bin_dir/$target ]]; then
        echo "no fuzz target '$target' (expected one of: $(cargo "${toolchain[@]}" fuzz list | tr '\n' ' '))" >&2
        exit 2
    fi
    fuzz_one "$target" &
    running=$(( running + 1 ))
    if [[ $running -ge $jobs ]]; then
        wait -n
        running=$(( running - 1 ))
    fi
done
wait

failed=0
printf '%-20s %12s %10s %8s\n' target executions exec/s crashes
for target in $targets; do
    read -r name executions rate crashes <"$work/$target.result"
    printf '%-20s %12s %10s %8s\n' "$name" "$executions" "$rate" "$crashes"
    if [[ $crashes -ne 0 ]]; then
        failed=1
    fi
done
for target in $targets; do
    read -r _ _ _ crashes <"$work/$target.result"
    if [[ $crashes -ne 0 ]]; then
        echo
        echo "== $target failed; the end of libFuzzer's output:"
        grep -v '^#' "$work/$target.log" | tail -n 30 || true
    fi
done
exit $failed
