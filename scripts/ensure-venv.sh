#!/usr/bin/env bash
# Create the virtual environment, installing Debian's venv support first when it is missing.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}

if ! command -v "$python" >/dev/null; then
  echo "Casemail needs Python 3.11 or newer ($python not found)." >&2
  exit 1
fi
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Casemail needs Python 3.11 or newer; $python is $("$python" --version 2>&1)." >&2
  exit 1
fi
if [ -x "$venv/bin/python" ]; then
  exit 0
fi
if ! "$python" -m venv "$venv" 2>/dev/null; then
  rm -rf "$venv"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${minor}-venv" || \
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    "$python" -m venv "$venv"
  else
    echo "Cannot create a virtual environment: install python3-venv (sudo apt-get install python3-venv)." >&2
    exit 1
  fi
fi
