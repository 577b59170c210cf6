#!/usr/bin/env bash
# Make sure a Redis answers at the given URL; start a local one (installing it with apt when
# running as root) when the URL points at this machine and nothing answers.
set -euo pipefail
url=${1:-redis://127.0.0.1:6379/0}

read -r host port < <(python3 - "$url" <<'PY'
import sys
from urllib.parse import urlsplit
u = urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or 6379)
PY
)

answers() {
  python3 - "$host" "$port" <<'PY'
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as s:
        s.sendall(b"PING\r\n")
        sys.exit(0 if s.recv(16).startswith((b"+PONG", b"-NOAUTH")) else 1)
except OSError:
    sys.exit(1)
PY
}

if answers; then
  exit 0
fi
case "$host" in
  127.*|localhost|::1) ;;
  *) echo "Redis does not answer at $url; start it or set REDIS_URL." >&2; exit 1 ;;
esac
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing redis-server with apt-get ..."
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "Redis is not running at $url and redis-server is not installed." >&2
    echo "Install it (sudo apt-get install redis-server) or point REDIS_URL at a running Redis." >&2
    exit 1
  fi
fi
dir=${TMPDIR:-/tmp}/casemail-redis-$port
mkdir -p "$dir"
echo "Starting redis-server on $host:$port (data in $dir) ..."
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
  --dir "$dir" --logfile "$dir/redis.log"
for _ in $(seq 1 50); do
  answers && exit 0
  sleep 0.1
done
echo "redis-server did not answer on port $port; see $dir/redis.log" >&2
exit 1
