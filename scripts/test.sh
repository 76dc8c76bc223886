#!/usr/bin/env bash
# Set up, build and run every test: the normal build under ctest, then the
# libFuzzer targets (clang, build-fuzz/: every corpus replayed and each
# target fuzzed for $STATION_FUZZ_SECONDS, default 10, seconds), then the
# whole suite again built with AddressSanitizer and UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
(cd build && ctest --output-on-failure -j 2)
if [ "${STATION_SKIP_FUZZ:-}" != 1 ]; then
    ./scripts/fuzz.sh "${STATION_FUZZ_SECONDS:-10}"
fi
if [ "${STATION_SKIP_ASAN:-}" != 1 ]; then
    BUILD_DIR=build-asan ./scripts/setup.sh -DSTATION_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j 2)
fi
