#!/bin/sh
# What pip cannot install and the tests need: PostgreSQL (the evidence index's production database) and Redis
# (the Celery broker of tests/system/test_celery_real_run.py), both started by the tests on 127.0.0.1.
# Installed with apt-get when missing and run as root; otherwise a notice.
# Used by `make test` and .ci/run. POSIX sh.
set -eu

missing=""
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"

if [ -z "$missing" ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: apt-get install$missing"
    log="$(mktemp)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } >"$log" 2>&1; then
        cat "$log" >&2
        echo "system-deps: apt-get install failed" >&2
        exit 1
    fi
    rm -f "$log"
else
    echo "system-deps: not installed:$missing (needs root and apt-get); the tests that need it will fail" >&2
fi
