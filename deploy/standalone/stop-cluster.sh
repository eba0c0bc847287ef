#!/usr/bin/env bash
# Stop the cluster that start-cluster.sh started: each JVM by the PID recorded in the run dir
# (SIGTERM, then SIGKILL after DSEL_STOP_TIMEOUT seconds).  Nothing else is touched.
#
#   DSEL_CLUSTER_DIR   the same run dir as start-cluster.sh (default: ${TMPDIR:-/tmp}/dsel-standalone)
set -uo pipefail

RUN_DIR=${DSEL_CLUSTER_DIR:-${TMPDIR:-/tmp}/dsel-standalone}
STOP_TIMEOUT=${DSEL_STOP_TIMEOUT:-20}

stop_pid() {  # stop_pid NAME PID
    local name=$1 pid=$2
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "stop-cluster: $name (PID $pid) is not running"
        return
    fi
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do
        kill -0 "$pid" 2>/dev/null || { echo "stop-cluster: stopped $name (PID $pid)"; return; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    echo "stop-cluster: killed $name (PID $pid) after ${STOP_TIMEOUT}s"
}

shopt -s nullglob
# Workers first, then the master.
for pidfile in "$RUN_DIR"/worker-*.pid "$RUN_DIR"/master.pid; do
    [ -e "$pidfile" ] || continue
    stop_pid "$(basename "$pidfile" .pid)" "$(cat "$pidfile")"
    rm -f "$pidfile"
done
rm -f "$RUN_DIR/master-url"
