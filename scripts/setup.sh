#!/usr/bin/env bash
# Install what the station needs on Debian 12 (only what is missing), then
# configure and build it into build/ (or $BUILD_DIR). Extra arguments go to
# cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(build-essential cmake pkg-config libuv1-dev libsqlite3-dev libusb-1.0-0-dev
          libncurses-dev libsodium-dev nettle-dev libxxhash-dev libcmocka-dev sqlite3 valgrind tmux python3
          android-libsparse-dev android-sdk-libsparse-utils fastboot libinih-dev minisign
          zlib1g-dev dfu-util umockdev libumockdev-dev usbutils
          systemd udev dpkg-dev groff-base clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

build="${BUILD_DIR:-build}"
werror=OFF
[ -n "${CI:-}" ] && werror=ON
cmake -S . -B "$build" -DSTATION_WERROR="$werror" "$@" >/dev/null
cmake --build "$build" -j "$(nproc)"
