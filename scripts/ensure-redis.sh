#!/usr/bin/env bash
# Make sure a Redis answers on 127.0.0.1:6379 (the shared-state tests use it, with their own key
# prefixes): use the running one, else start the local server, else (as root, on Debian) install
# it first. Used by `make test`.
set -euo pipefail

answers() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }

if answers; then exit 0; fi

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Redis is not installed: installing Debian's redis-server" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "No Redis on 127.0.0.1:6379 and cannot install it (need root + apt-get)." >&2
    exit 1
  fi
fi

echo "starting Redis" >&2
redis-server --bind 127.0.0.1 --port 6379 --daemonize yes --save '' >/dev/null 2>&1 || true
for _ in $(seq 1 30); do
  if answers; then exit 0; fi
  sleep 1
done
echo "Redis did not come up within 30 s" >&2
exit 1
