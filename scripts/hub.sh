#!/usr/bin/env bash
# `make hub`: run the nchan hub (HUB_PROTOCOL=nchan, contract §9) on this machine: nginx with
# the project's deploy/nginx/ configuration, in its own prefix (.hub/: pid, logs, temp files)
# and on its own port, never touching the machine's own nginx sites. Installs Debian's nginx
# and libnginx-mod-nchan when missing (as root), as scripts/ensure-rabbitmq.sh does.
#
#   HUB_PORT (default 8090), HUB_BIND (default 127.0.0.1), WEBSOCKET_TOKEN (publishers must
#   send "Authorization: Bearer <it>"; empty: anyone who reaches the port may publish).
#   scripts/hub.sh stop    stops it; scripts/hub.sh install only installs what is missing.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX="${HUB_PREFIX:-$ROOT/.hub}"
PORT="${HUB_PORT:-8090}"
BIND="${HUB_BIND:-127.0.0.1}"
TOKEN="${WEBSOCKET_TOKEN:-}"

running() { [ -f "$PREFIX/nginx.pid" ] && kill -0 "$(cat "$PREFIX/nginx.pid")" 2>/dev/null; }

if [ "${1:-start}" = "stop" ]; then
  if running; then
    nginx -p "$PREFIX" -c "$PREFIX/nginx.conf" -s stop 2>/dev/null
    echo "hub stopped"
  else
    echo "hub not running"
  fi
  exit 0
fi

module=""
for candidate in /usr/lib/nginx/modules/ngx_nchan_module.so /usr/share/nginx/modules/ngx_nchan_module.so; do
  if [ -f "$candidate" ]; then module="$candidate"; break; fi
done
if ! command -v nginx >/dev/null 2>&1 || [ -z "$module" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian's nginx and libnginx-mod-nchan" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null \
      || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan >/dev/null
    module=/usr/lib/nginx/modules/ngx_nchan_module.so
  else
    echo "nginx with the nchan module is not installed and cannot be (need root + apt-get):" >&2
    echo "  apt-get install nginx libnginx-mod-nchan" >&2
    exit 1
  fi
fi

# `scripts/hub.sh install`: only make sure nginx + nchan are there (`make test` needs them).
if [ "${1:-start}" = "install" ]; then exit 0; fi

if running; then
  nginx -p "$PREFIX" -c "$PREFIX/nginx.conf" -s stop 2>/dev/null
  sleep 0.5
fi
mkdir -p "$PREFIX/tmp"
open=0
[ -z "$TOKEN" ] && open=1
# The same substitution as tests/nchan.py (envsubst-style ${NAME}); | is not in a token we accept.
render() {
  sed -e "s|\${HUB_LISTEN}|$BIND:$PORT|g" \
      -e "s|\${HUB_TOKEN}|$TOKEN|g" \
      -e "s|\${HUB_OPEN_PUBLISHER}|$open|g" \
      -e "s|\${HUB_PREFIX}|$PREFIX|g" \
      -e "s|\${HUB_NCHAN_MODULE}|$module|g" "$1" > "$2"
}
case "$TOKEN" in *'|'*|*'"'*|*' '*) echo "WEBSOCKET_TOKEN may not contain '|', '\"' or spaces" >&2; exit 2;; esac
render "$ROOT/deploy/nginx/nchan.conf" "$PREFIX/nchan.conf"
render "$ROOT/deploy/nginx/nginx.conf" "$PREFIX/nginx.conf"
chmod 600 "$PREFIX/nchan.conf"
nginx -t -q -p "$PREFIX" -c "$PREFIX/nginx.conf"
nginx -p "$PREFIX" -c "$PREFIX/nginx.conf"

host="$BIND"
[ "$host" = "0.0.0.0" ] && host="$(hostname -I 2>/dev/null | awk '{print $1}')"
cat <<MSG
nchan hub running (nginx pid $(cat "$PREFIX/nginx.pid"), config and logs in $PREFIX)
  publisher (the service):  HUB_PROTOCOL=nchan WEBSOCKET_URI=ws://$host:$PORT/pub   (or http://$host:$PORT/pub)
  subscribers (browsers):   HUB_PUBLIC_URL=ws://$host:$PORT/sub   (EventSource: http://$host:$PORT/sub/<channel>)
  publisher token:          $([ -n "$TOKEN" ] && echo "WEBSOCKET_TOKEN (Bearer)" || echo "none: set WEBSOCKET_TOKEN to require one")
  stop it:                  make hub-stop
MSG
