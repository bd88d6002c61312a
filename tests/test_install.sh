#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs the build into a temporary prefix and builds a small program
# against it three ways: pkg-config with the shared library, pkg-config
# --static with libsamplex.a, and a CMake project using find_package(samplex)
# (samplex::samplex and samplex::samplex_static). Runs each and checks it.
# ctest passes SAMPLEX_SOURCE_DIR, SAMPLEX_BUILD_DIR, SAMPLEX_BIN_DIR.
set -euo pipefail

: "${SAMPLEX_BUILD_DIR:?run through ctest}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
fail() { echo "FAIL: $*" >&2; exit 1; }

# Use the compiler and sanitizers of the build: an ASan library needs an
# ASan program.
cc=$(sed -n 's/^set(CMAKE_C_COMPILER "\(.*\)")$/\1/p' "$SAMPLEX_BUILD_DIR"/CMakeFiles/*/CMakeCCompiler.cmake \
     2>/dev/null | head -n 1)
cc=${cc:-cc}
sanitize=$(sed -n 's/^SAMPLEX_SANITIZE:[A-Z]*=//p' "$SAMPLEX_BUILD_DIR/CMakeCache.txt")
cflags=(-std=c11 -Wall -Wextra -Wpedantic -Werror)
[[ -z $sanitize ]] || cflags+=(-fsanitize="$sanitize" -fno-omit-frame-pointer)

cmake --install "$SAMPLEX_BUILD_DIR" --prefix "$prefix" >"$tmp/install.log" 2>&1 \
    || { cat "$tmp/install.log"; fail "cmake --install"; }

# GNUInstallDirs may have chosen lib, lib64 or lib/x86_64-linux-gnu.
pc_file=$(find "$prefix" -path '*/pkgconfig/samplex.pc' | head -n 1)
[[ -n $pc_file ]] || fail "no samplex.pc installed under $prefix"
libdir=$(dirname "$(dirname "$pc_file")")
[[ -f $libdir/libsamplex.a ]] || fail "no libsamplex.a in $libdir"
ls "$libdir"/libsamplex.so* >/dev/null 2>&1 || fail "no libsamplex.so in $libdir"
[[ -f $prefix/include/samplex/plex.h ]] || fail "no include/samplex/plex.h"
[[ -f $libdir/cmake/samplex/samplexConfig.cmake ]] || fail "no samplexConfig.cmake"

cat >"$tmp/main.c" <<'EOF'
#include <samplex/plex.h>
#include <stdio.h>

int main(void)
{
    PlexRegistry *registry = plex_registry_create();
    if (registry == NULL)
        return 2;
    Plex *plex = plex_create(registry, "install test");
    if (plex == NULL)
        return 3;
    if (plex_destroy(plex) < 0)
        return 4;
    plex_registry_destroy(registry);
    puts("samplex install ok");
    return 0;
}
EOF

# check_program PROGRAM SHOULD_LINK_SHARED: runs it, checks output and linkage.
check_program() {
    local program=$1 shared=$2 output
    output=$(LD_LIBRARY_PATH=$libdir "$program") || fail "$program exited with $?"
    [[ $output == "samplex install ok" ]] || fail "$program printed '$output'"
    if [[ $shared == yes ]]; then
        # Captured first: with pipefail, `ldd | grep -q` fails whenever grep's
        # early exit kills ldd with SIGPIPE.
        local linkage
        linkage=$(LD_LIBRARY_PATH=$libdir ldd "$program")
        grep -q "$libdir/libsamplex.so" <<<"$linkage" \
            || fail "$program does not use $libdir/libsamplex.so"
    else
        local linkage
        linkage=$(ldd "$program")
        ! grep -q libsamplex.so <<<"$linkage" || fail "$program links libsamplex.so"
    fi
    echo "ok: $(basename "$program")"
}

export PKG_CONFIG_PATH=$libdir/pkgconfig
pkg-config --exists samplex || fail "pkg-config cannot find samplex"
[[ $(pkg-config --variable=prefix samplex) == "$prefix" ]] \
    || fail "samplex.pc names prefix $(pkg-config --variable=prefix samplex), not $prefix"

# Shared, through pkg-config.
read -ra pc_cflags <<<"$(pkg-config --cflags samplex)"
read -ra pc_libs <<<"$(pkg-config --libs samplex)"
"$cc" "${cflags[@]}" "${pc_cflags[@]}" "$tmp/main.c" -o "$tmp/pc_shared" "${pc_libs[@]}" \
    || fail "build with pkg-config --libs samplex"
check_program "$tmp/pc_shared" yes

# Static, through pkg-config --static: libsamplex.a plus its private
# dependencies (liburing, libpq). Debian's libpq.pc lists static archives
# it does not ship (-lpgcommon -lpgport ...): those the linker cannot find
# are dropped, as libpq.so does not need them.
read -ra static_libs <<<"$(pkg-config --static --libs samplex)"
[[ " ${static_libs[*]} " == *" -luring "* ]] || fail "pkg-config --static lacks -luring"
[[ " ${static_libs[*]} " == *" -lpq "* ]] || fail "pkg-config --static lacks -lpq"
link=()
for flag in "${static_libs[@]}"; do
    case $flag in
        -lsamplex) link+=(-l:libsamplex.a) ;;
        -l*)
            name=${flag#-l}
            if [[ $("$cc" -print-file-name="lib$name.so") == /* ||
                  $("$cc" -print-file-name="lib$name.a") == /* ]]; then
                link+=("$flag")
            else
                echo "note: dropping $flag (no lib$name here)"
            fi ;;
        *) link+=("$flag") ;;
    esac
done
"$cc" "${cflags[@]}" "${pc_cflags[@]}" "$tmp/main.c" -o "$tmp/pc_static" "${link[@]}" \
    || fail "build with pkg-config --static --libs samplex"
check_program "$tmp/pc_static" no

# CMake: find_package(samplex).
mkdir "$tmp/consumer"
cp "$tmp/main.c" "$tmp/consumer/main.c"
cat >"$tmp/consumer/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.16)
project(samplex_consumer C)
find_package(samplex REQUIRED)
add_executable(consumer_shared main.c)
target_link_libraries(consumer_shared PRIVATE samplex::samplex)
add_executable(consumer_static main.c)
target_link_libraries(consumer_static PRIVATE samplex::samplex_static)
EOF
sanitize_flags=()
[[ -z $sanitize ]] || sanitize_flags=("-DCMAKE_C_FLAGS=-fsanitize=$sanitize -fno-omit-frame-pointer"
                                      "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=$sanitize")
cmake -S "$tmp/consumer" -B "$tmp/consumer/build" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_PREFIX_PATH="$prefix" "${sanitize_flags[@]}" >"$tmp/consumer.log" 2>&1 \
    || { cat "$tmp/consumer.log"; fail "configuring a find_package(samplex) project"; }
grep -q "^samplex_DIR:PATH=$prefix/" "$tmp/consumer/build/CMakeCache.txt" \
    || fail "find_package(samplex) did not find the one in $prefix"
cmake --build "$tmp/consumer/build" >>"$tmp/consumer.log" 2>&1 \
    || { cat "$tmp/consumer.log"; fail "building a find_package(samplex) project"; }
check_program "$tmp/consumer/build/consumer_shared" yes
check_program "$tmp/consumer/build/consumer_static" no

echo "test_install: all ok"
