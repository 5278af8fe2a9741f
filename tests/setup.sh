#!/bin/sh
# Installs everything the test suite runs on, before it runs:
#   - the Debian packages of the real components the tests start (nginx, chromium,
#     PostgreSQL, sshfs), with apt-get, when they are missing and we are root;
#   - this package and its test extras, at exactly the versions in constraints.txt.
# Refresh the pins (one command, in a throwaway virtual environment):
#   python -m venv /tmp/lock && /tmp/lock/bin/pip install -e '.[test,bench]' \
#     && /tmp/lock/bin/pip freeze --exclude-editable > constraints.txt
set -eu
cd "$(dirname "$0")/.."

need=""
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need="$need nginx"
command -v chromium >/dev/null 2>&1 || need="$need chromium"
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 \
  || need="$need postgresql"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
command -v sshfs >/dev/null 2>&1 || need="$need sshfs openssh-server openssh-client"
if [ -n "$need" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "tests/setup.sh: apt-get install$need"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends $need >/dev/null
  else
    echo "tests/setup.sh: not root, so not installing:$need (the tests that need them will say so)" >&2
  fi
fi

python -m pip install -q -c constraints.txt -e '.[test]'

# The test-only Node packages (the Durable Streams client and conformance suite), from
# the committed lock file.
if command -v npm >/dev/null 2>&1; then
  (cd tests/js && npm ci --silent --no-audit --no-fund)
else
  echo "tests/setup.sh: npm is missing, so not installing tests/js (the Durable Streams tests will say so)" >&2
fi
