#!/bin/sh
# Debian ships venv support in a separate package; install it when we can.
PYTHON=${1:-python3}
if "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "python${version}-venv" || \
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
else
    echo "Python's venv module is missing: install python3-venv (e.g. sudo apt-get install python3-venv)" >&2
    exit 1
fi
