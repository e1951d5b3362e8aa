#!/usr/bin/env bash
# stop.sh DIR — stop the servers that start.sh DIR started (by the PIDs it
# recorded in DIR/pids, nothing else) and remove DIR.
# Safe to call twice, or after a failed start.
set -uo pipefail

MARKER=.kube-nftproxy-real-apiserver
log() { printf '[real-apiserver/stop %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

[[ $# -eq 1 && -n $1 ]] || { log "usage: $0 DIR"; exit 2; }
[[ -d $1 ]] || { log "$1 does not exist; nothing to do"; exit 0; }
DIR=$(cd "$1" && pwd)
[[ -f $DIR/$MARKER ]] || { log "$DIR was not created by start.sh (no $MARKER); refusing to touch it"; exit 1; }

# Only signal a PID if it still runs the program we started with DIR in its
# arguments (guards against PID reuse).
ours() {
    local pid=$1 cmd
    [[ -r /proc/$pid/cmdline ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmd == *"$DIR"* ]]
}

PIDS=()
if [[ -f $DIR/pids ]]; then
    # apiserver first (last line), then etcd
    while read -r name pid; do
        [[ $pid =~ ^[0-9]+$ ]] || continue
        if ours "$pid"; then
            PIDS=("$pid" "${PIDS[@]}")
            log "stopping $name (pid $pid)"
        fi
    done <"$DIR/pids"
fi

for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        ours "$pid" || break
        sleep 0.1
    done
    if ours "$pid"; then
        log "pid $pid did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
done

rm -rf -- "$DIR"
log "removed $DIR"
