#!/usr/bin/env bash
# Installs what a fresh Debian machine with only Rust lacks to build Garam.
# Today: a C compiler (zstd's bindings build C). Later issues add libclang (RocksDB's bindings).
set -euo pipefail
missing=()
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo not found; install Rust from rustup first" >&2; exit 1; }
