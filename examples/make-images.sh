#!/bin/sh
# Make the demo images that examples/recipes/*.recipe name, into DIR
# (the recipes expect examples/images, i.e. `examples/make-images.sh examples/images`).
#
#   boot.img       1 MiB of a repeated text line (the phone's boot partition)
#   system.img     an 8 MiB Android sparse image (img2simg) that is mostly zeros,
#                  with 1 MiB of text at 0 and 512 KiB at 5 MiB
#   firmware.bin   256 KiB raw firmware for the DFU board (no DFU suffix)
#
# boot.img and firmware.bin are byte-for-byte reproducible, so the recipes pin
# their SHA-256; system.img depends on img2simg's version and is not pinned.
# Needs coreutils and img2simg (Debian package android-sdk-libsparse-utils).
set -eu

if [ $# -ne 1 ]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dir=$1
mkdir -p "$dir"
command -v img2simg >/dev/null || {
    echo "$0: img2simg not found (apt-get install android-sdk-libsparse-utils)" >&2
    exit 1
}

# `yes` ends on SIGPIPE once head has enough; the redirection keeps that
# out of the script's exit status.
pattern() { # TEXT BYTES > file
    yes "$1" 2>/dev/null | head -c "$2" || true
}

pattern "station demo boot image" 1048576 > "$dir/boot.img"
pattern "station demo board firmware" 262144 > "$dir/firmware.bin"

raw="$dir/system.raw.$$"
trap 'rm -f "$raw"' EXIT
dd if=/dev/zero of="$raw" bs=1M count=0 seek=8 2>/dev/null
pattern "station demo system image" 1048576 | dd of="$raw" bs=1M conv=notrunc 2>/dev/null
pattern "station demo system data" 524288 | dd of="$raw" bs=512K seek=10 conv=notrunc 2>/dev/null
img2simg "$raw" "$dir/system.img"
echo "made $dir/boot.img $dir/system.img $dir/firmware.bin"
