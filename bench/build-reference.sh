#!/bin/sh
# Builds the reference C mkcomposefs (and composefs-info, which the canonical
# tests' reference needs: test/helpers/canonical.ts) for `npm run bench` (bench/pull.ts) from a
# checkout of https://github.com/composefs/composefs given as $1, into
# ${CFS_BENCH_PULL_DIR:-/var/tmp/cfs-bench-pull}/composefs-ref. Needs meson,
# ninja and OpenSSL's headers (installed with apt-get when missing).
set -eu
src=${1:?usage: bench/build-reference.sh COMPOSEFS_SOURCE_DIR}
out=${CFS_BENCH_PULL_DIR:-/var/tmp/cfs-bench-pull}/composefs-ref
if ! command -v meson >/dev/null || ! command -v ninja >/dev/null || ! [ -e /usr/include/openssl/sha.h ]; then
  apt-get update -qq && apt-get install -y -qq meson ninja-build libssl-dev pkg-config >/dev/null
fi
rm -rf "$out"
mkdir -p "$out"
# Only what the tools need: the tests and man pages pull in more than a build of mkcomposefs wants.
cp -r "$src/meson.build" "$src/meson_options.txt" "$src/libcomposefs" "$src/tools" "$src/composefs.pc.in" "$out/"
sed -i "/subdir('tests')/d; /subdir('man')/d" "$out/meson.build"
cd "$out"
meson setup build -Dfuse=disabled -Dman=disabled --buildtype=release >/dev/null
ninja -C build tools/mkcomposefs tools/composefs-info >/dev/null
echo "$out/build/tools/mkcomposefs"
