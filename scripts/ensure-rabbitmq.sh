#!/usr/bin/env bash
# Make sure a RabbitMQ broker answers on 127.0.0.1:5672: use the running one, else start the
# local server, else (as root, on Debian) install it first. Used by `make test` and `make demo`.
set -euo pipefail

answers() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if answers; then exit 0; fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "RabbitMQ is not installed: installing Debian's rabbitmq-server" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
  else
    echo "No RabbitMQ on 127.0.0.1:5672 and cannot install it (need root + apt-get)." >&2
    exit 1
  fi
fi

echo "starting RabbitMQ" >&2
rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 90); do
  if answers && rabbitmqctl -q status >/dev/null 2>&1; then exit 0; fi
  sleep 1
done
echo "RabbitMQ did not come up within 90 s" >&2
exit 1
