#!/usr/bin/env bash
# System packages vlrl needs beside Python: bubblewrap, the sandbox for model-written code.
set -euo pipefail
if command -v bwrap >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap
else
  echo "WARNING: bubblewrap (bwrap) is missing and cannot be installed here (needs root + apt-get)." >&2
  echo "WARNING: install it (e.g. 'sudo apt-get install bubblewrap'): without it the sandbox refuses to run" >&2
  echo "WARNING: model-written code unless sandbox.allow_unsandboxed=true." >&2
fi
