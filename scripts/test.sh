#!/usr/bin/env bash
# Installs meterline with its test extras into .venv and runs the whole test suite (lint included).
# Used as-is by the README and by CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser tests drive Debian's Chromium (Playwright's own browser download does not work offline).
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

# Budget tests use a real Redis: the one answering on 127.0.0.1:6379 (database 15), or else Debian's
# redis-server started here on a free port for the run (MLINE_TEST_REDIS_URL tells the tests).
redis_answers() {  # PING a Redis on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'PING\r\n' >&3 && read -r -t 2 reply <&3 && [[ "$reply" == "+PONG"* ]]) \
        2>/dev/null
}
if [ -z "${MLINE_TEST_REDIS_URL:-}" ] && ! redis_answers 6379; then
    if ! command -v redis-server >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
    fi
    redis_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    redis_dir=$(mktemp -d)
    redis-server --bind 127.0.0.1 --port "$redis_port" --dir "$redis_dir" --save '' --appendonly no >"$redis_dir/log" &
    redis_pid=$!
    trap 'kill "$redis_pid" 2>/dev/null; wait "$redis_pid" 2>/dev/null; rm -rf "$redis_dir"' EXIT
    for _ in $(seq 100); do redis_answers "$redis_port" && break; sleep 0.1; done
    redis_answers "$redis_port" || { cat "$redis_dir/log"; echo "redis-server did not start" >&2; exit 1; }
    export MLINE_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/15"
fi

python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,tokenizer]'

.venv/bin/ruff check src tests bench
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
