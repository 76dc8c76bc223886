#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz/README.md) with clang into
# build-fuzz/ (or $BUILD_DIR), replay every seed and regression input,
# then fuzz each target for a while. Fails when a target crashes, leaks,
# hangs, runs out of memory or trips ASan/UBSan.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# SECONDS of fuzzing per target (default 10; 0 replays only). TARGETs
# default to every tests/fuzz/fuzz_*.c. $FUZZ_JOBS targets run at once
# (default: the number of CPUs). New inputs go to BUILD/fuzz-work/TARGET,
# crashes to BUILD/fuzz-artifacts/; the seed corpora are only read.
# Needs clang and libclang-rt-14-dev (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

build="${BUILD_DIR:-build-fuzz}"
seconds="${1:-10}"
[ $# -gt 0 ] && shift
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for src in tests/fuzz/fuzz_*.c; do
        t="$(basename "$src" .c)"
        [ "$t" = fuzz_util ] || [ "$t" = fuzz_transport ] || targets+=("${t#fuzz_}")
    done
fi
jobs="${FUZZ_JOBS:-$(nproc)}"
command -v clang >/dev/null || { echo "fuzz: clang not found (run scripts/setup.sh)" >&2; exit 1; }

start=$(date +%s)
mkdir -p "$build"
if ! { CC=clang cmake -S . -B "$build" -DSTATION_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo &&
       cmake --build "$build" --target fuzz -j "$(nproc)"; } >"$build/fuzz-build.log" 2>&1; then
    tail -n 40 "$build/fuzz-build.log" >&2
    echo "fuzz: build failed (all of it in $build/fuzz-build.log)" >&2
    exit 1
fi
echo "fuzz: built ${#targets[@]} targets in $(($(date +%s) - start)) s"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
bin="$build/tests/fuzz"
logs="$build/fuzz-logs"
art="$build/fuzz-artifacts"
mkdir -p "$logs" "$art"
failed=()

fail() { # TARGET LOG WHAT
    failed+=("$1")
    echo "fuzz: $1: $3; the end of $2:" >&2
    tail -n 40 "$2" >&2
}

# Replay: every file of every corpus, one run each (seeds and regressions).
for t in "${targets[@]}"; do
    files=(tests/fuzz/corpus/"$t"/*)
    log="$logs/$t.replay.log"
    if "$bin/fuzz_$t" -timeout=10 -rss_limit_mb=2048 "${files[@]}" >"$log" 2>&1; then
        echo "fuzz: $t: replayed ${#files[@]} inputs"
    else
        fail "$t" "$log" "replay failed"
    fi
done

# Fuzz: each target for $seconds, $jobs at a time.
run_one() {
    local t="$1" log="$logs/$1.fuzz.log"
    mkdir -p "$build/fuzz-work/$t"
    "$bin/fuzz_$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$art/$t-" \
        "$build/fuzz-work/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
}
if [ "$seconds" -gt 0 ] && [ ${#failed[@]} -eq 0 ]; then
    declare -A pid_of
    running=()
    for t in "${targets[@]}"; do
        run_one "$t" &
        pid_of[$t]=$!
        running+=("$t")
        if [ ${#running[@]} -ge "$jobs" ]; then
            wait "${pid_of[${running[0]}]}" || fail "${running[0]}" "$logs/${running[0]}.fuzz.log" "fuzzing failed"
            running=("${running[@]:1}")
        fi
    done
    for t in "${running[@]}"; do
        wait "${pid_of[$t]}" || fail "$t" "$logs/$t.fuzz.log" "fuzzing failed"
    done
    for t in "${targets[@]}"; do
        done_line="$(grep -a 'DONE ' "$logs/$t.fuzz.log" | tail -n 1 || true)"
        [ -z "$done_line" ] || echo "fuzz: $t: $done_line"
    done
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (inputs in $art/; reproduce with $bin/fuzz_TARGET FILE)" >&2
    exit 1
fi
echo "fuzz: all ${#targets[@]} targets clean in $(($(date +%s) - start)) s"
