#!/usr/bin/env bash
# Installs what a fresh Debian machine with only Rust lacks to build Garam.
# A C/C++ compiler (zstd, mimalloc and RocksDB build C/C++) and libclang (RocksDB's bindings).
set -euo pipefail
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# RocksDB's Rust bindings are generated with libclang.
ls /usr/lib/llvm-*/lib/libclang.so >/dev/null 2>&1 || ls /usr/lib/x86_64-linux-gnu/libclang*.so >/dev/null 2>&1 || missing+=(libclang-dev)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from rustup first" >&2; exit 1; }
