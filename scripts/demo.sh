#!/usr/bin/env bash
# Set up, build and run the station on its simulated rack (16 virtual
# fastboot devices, replugged by a simulated operator). Ctrl-C stops it;
# extra arguments go to `station run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec ./build/station run --simulate 16 --db build/demo.db "$@"
