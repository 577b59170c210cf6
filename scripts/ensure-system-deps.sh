#!/usr/bin/env bash
# Install the Debian packages Casemail needs besides Python packages, when they are missing.
#   scripts/ensure-system-deps.sh run    # what the app needs: Graphviz's `dot` (stage diagrams)
#   scripts/ensure-system-deps.sh test   # that, plus Dovecot (IMAP, POP3), Chromium and openssl
set -euo pipefail
purpose=${1:-run}
missing=()
command -v dot >/dev/null || missing+=(graphviz)
if [ "$purpose" = test ]; then
  [ -x /usr/sbin/dovecot ] && [ -x /usr/lib/dovecot/imap ] || missing+=(dovecot-imapd)
  [ -x /usr/lib/dovecot/pop3 ] || missing+=(dovecot-pop3d)
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  command -v openssl >/dev/null || missing+=(openssl)
fi
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "Installing ${missing[*]} with apt-get ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "Casemail ($purpose) needs: ${missing[*]}. Install them: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
