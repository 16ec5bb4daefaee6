#!/usr/bin/env bash
# A headless Chromium for the browser test (tests/test_html.py), from Debian's package
# archive, unpacked into a folder (dpkg -x: nothing installed system-wide, no root needed
# once the package lists exist). Prints the path of the chromium binary.
#   bash .ci/chromium.sh [DEST]     (default .nox/chromium)
# The libraries beyond chromium's own are those a Debian 12 Python image lacks; where a
# machine has them, unpacking them again is harmless.
set -euo pipefail
dest=$(realpath -m "${1:-.nox/chromium}")
binary="$dest/usr/lib/chromium/chromium"
if [ -x "$binary" ]; then echo "$binary"; exit 0; fi
packages=(chromium chromium-common libflac12 libxnvctrl0 libdouble-conversion3 libharfbuzz-subset0 libminizip1
          libopenh264-7 libopenjp2-7 libopus0 libpulse0 libogg0 libsndfile1 libasyncns0 libmp3lame0 libmpg123-0
          libvorbis0a libvorbisenc2)
mkdir -p "$dest/debs"
cd "$dest/debs"
if ! apt-get download "${packages[@]}" >&2; then
    # no package lists yet (a fresh image): fetch them, which needs root
    apt-get update -qq >&2 && apt-get download "${packages[@]}" >&2
fi
for deb in *.deb; do dpkg -x "$deb" "$dest"; done
test -x "$binary"
echo "$binary"
