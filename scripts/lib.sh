# Shared shell helpers for scripts/demo, scripts/test and friends. Source it; don't run it.
# Installs what is missing (Debian/Ubuntu), starts and stops private redis-server processes.

NR_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NR_APT_UPDATED=""

nr_say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
nr_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# nr_need_packages PKG...: apt-get install the packages that are not installed (apt-get update once first).
nr_need_packages() {
    local missing=()
    local pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || nr_die "missing packages ${missing[*]} and no apt-get to install them"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    local log
    log="$(mktemp /tmp/nativerunner-apt.XXXXXX.log)"
    if [ -z "$NR_APT_UPDATED" ]; then
        nr_say "apt-get update"
        $sudo apt-get update -qq >"$log" 2>&1 || { tail -n 20 "$log" >&2; nr_die "apt-get update failed (log: $log)"; }
        NR_APT_UPDATED=1
    fi
    nr_say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$log" 2>&1 \
        || { tail -n 20 "$log" >&2; nr_die "apt-get install ${missing[*]} failed (log: $log)"; }
    rm -f "$log"
}

# The build and runtime needs: hiredis headers + pkg-config for the build, redis-server for runs and tests.
nr_need_build_deps() {
    nr_need_packages libhiredis-dev pkg-config redis-server redis-tools
    command -v swift >/dev/null || nr_die "no swift toolchain on PATH (Swift 6 is required)"
}

# The Python packages the interop tests use (the example control plane, schema validation, the metrics parser,
# deploy/ YAML checks), from PyPI into a venv of their own, installed once. Exports NR_PYTHON (the venv's python3),
# which the tests run; without it they fall back to python3 on PATH.
NR_PYTHON_PACKAGES=(redis jsonschema prometheus_client pyyaml)
NR_PYTHON_MODULES="redis, jsonschema, prometheus_client, yaml"
nr_need_python_deps() {
    local venv="${NR_PYTHON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/nativerunner/python-venv}"
    command -v python3 >/dev/null || nr_need_packages python3
    if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -c "import $NR_PYTHON_MODULES" 2>/dev/null; then
        python3 -c "import venv, ensurepip" 2>/dev/null || nr_need_packages python3-venv
        nr_say "installing ${NR_PYTHON_PACKAGES[*]} from PyPI into $venv"
        local log
        log="$(mktemp /tmp/nativerunner-pip.XXXXXX.log)"
        { python3 -m venv "$venv" && "$venv/bin/python3" -m pip install -q --disable-pip-version-check \
            "${NR_PYTHON_PACKAGES[@]}"; } >"$log" 2>&1 \
            || { tail -n 20 "$log" >&2; nr_die "pip could not install ${NR_PYTHON_PACKAGES[*]} into $venv (log: $log)"; }
        "$venv/bin/python3" -c "import $NR_PYTHON_MODULES" 2>>"$log" \
            || { tail -n 5 "$log" >&2; nr_die "$venv lacks one of $NR_PYTHON_MODULES after pip install (log: $log)"; }
        rm -f "$log"
    fi
    export NR_PYTHON="$venv/bin/python3"
}

# nr_free_port: prints a free TCP port on 127.0.0.1.
nr_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# nr_start_redis DIR [ARG...]: starts a private redis-server on a free loopback port with its files in DIR, without
# persistence unless the ARGs (redis-server options, after the defaults) say otherwise.
# Sets NR_REDIS_PORT and NR_REDIS_PID. Waits until it answers PING.
nr_start_redis() {
    local dir="$1"
    shift
    mkdir -p "$dir"
    local attempt
    for attempt in 1 2 3 4 5; do
        NR_REDIS_PORT="$(nr_free_port)"
        redis-server --port "$NR_REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$dir" \
            --daemonize no --logfile "$dir/redis.log" "$@" &
        NR_REDIS_PID=$!
        local i
        for i in $(seq 1 100); do
            if redis-cli -p "$NR_REDIS_PORT" ping 2>/dev/null | grep -q PONG; then
                return 0
            fi
            kill -0 "$NR_REDIS_PID" 2>/dev/null || break
            sleep 0.05
        done
        kill "$NR_REDIS_PID" 2>/dev/null
        wait "$NR_REDIS_PID" 2>/dev/null
    done
    nr_die "redis-server did not start (see $dir/redis.log)"
}

# nr_stop_pid PID [SECONDS]: SIGTERM, wait up to SECONDS (default 10), then SIGKILL.
nr_stop_pid() {
    local pid="$1" limit="${2:-10}" i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 1 $((limit * 20))); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null; return 0; }
        sleep 0.05
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}
