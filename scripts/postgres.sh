#!/usr/bin/env bash
# PostgreSQL server binaries for the catalog tests (Debian's postgresql package). Safe to run twice:
# does nothing when initdb is already installed. The tests start their own throw-away cluster in a
# temp folder (tests/helpers/postgres_server.py); nothing here starts or configures a server.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "postgres.sh: PostgreSQL is not installed; install it as root: apt-get install -y postgresql" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
