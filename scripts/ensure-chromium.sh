#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the web chat's browser tests
# (Playwright drives it through executable_path; Playwright's own browser download is never
# used). Installs it when missing and running as root on Debian. Used by `make test`.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then exit 0; fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Chromium is not installed: installing Debian's chromium" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
  echo "No /usr/bin/chromium and cannot install it (need root + apt-get)." >&2
  exit 1
fi
