#!/usr/bin/env bash
# Start a Spark standalone cluster on this machine: one master and two workers, each its own JVM,
# bound to 127.0.0.1 only, using the Spark that ships inside the pyspark wheel.
#
#   deploy/standalone/start-cluster.sh          # prints the master URL on its last line
#   spark-submit --master spark://127.0.0.1:7077 ... jobs/run.py ...
#   deploy/standalone/stop-cluster.sh
#
# Settings (environment):
#   PYTHON                   interpreter whose pyspark to use (default: python3)
#   DSEL_CLUSTER_DIR         run dir: PIDs, logs, worker work dirs (default: ${TMPDIR:-/tmp}/dsel-standalone)
#   DSEL_MASTER_PORT         master RPC port (default 7077)
#   DSEL_MASTER_WEBUI_PORT   master web UI / JSON status port (default 8080)
#   DSEL_WORKER_WEBUI_PORT   first worker's web UI port; worker i uses this + i - 1 (default 8081)
#   DSEL_WORKER_CORES        cores per worker (default 1)
#   DSEL_WORKER_MEMORY       memory per worker (default 2g)
#   DSEL_NUM_WORKERS         workers (default 2)
#   DSEL_START_TIMEOUT       seconds to wait for the workers to register (default 120)
set -euo pipefail

PYTHON=${PYTHON:-python3}
RUN_DIR=${DSEL_CLUSTER_DIR:-${TMPDIR:-/tmp}/dsel-standalone}
MASTER_PORT=${DSEL_MASTER_PORT:-7077}
MASTER_WEBUI_PORT=${DSEL_MASTER_WEBUI_PORT:-8080}
WORKER_WEBUI_PORT=${DSEL_WORKER_WEBUI_PORT:-8081}
WORKER_CORES=${DSEL_WORKER_CORES:-1}
WORKER_MEMORY=${DSEL_WORKER_MEMORY:-2g}
NUM_WORKERS=${DSEL_NUM_WORKERS:-2}
START_TIMEOUT=${DSEL_START_TIMEOUT:-120}
HOST=127.0.0.1

# Every Spark daemon (RPC and web UI) binds to this address only.
export SPARK_LOCAL_IP=$HOST
# The master's REST submission server would listen on a fixed port (6066); dsel submits over RPC.
export SPARK_MASTER_OPTS="${SPARK_MASTER_OPTS:-} -Dspark.master.rest.enabled=false"
SPARK_HOME=$("$PYTHON" -c 'import pyspark, os; print(os.path.dirname(pyspark.__file__))')
export SPARK_HOME
SPARK_CLASS="$SPARK_HOME/bin/spark-class"
[ -x "$SPARK_CLASS" ] || { echo "start-cluster: $SPARK_CLASS not found; install pyspark into $PYTHON's environment" >&2; exit 1; }

mkdir -p "$RUN_DIR"
for pidfile in "$RUN_DIR"/*.pid; do
    [ -e "$pidfile" ] || continue
    if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "start-cluster: $(basename "$pidfile" .pid) is already running (PID $(cat "$pidfile")); run stop-cluster.sh first" >&2
        exit 1
    fi
    rm -f "$pidfile"
done

launch() {  # launch NAME CLASS ARGS...: one JVM in the background; spark-class execs java, so $! is its PID
    local name=$1; shift
    nohup "$SPARK_CLASS" "$@" >"$RUN_DIR/$name.log" 2>&1 </dev/null &
    echo $! >"$RUN_DIR/$name.pid"
    echo "start-cluster: started $name (PID $!, log $RUN_DIR/$name.log)"
}

launch master org.apache.spark.deploy.master.Master \
    --host "$HOST" --port "$MASTER_PORT" --webui-port "$MASTER_WEBUI_PORT"
MASTER_URL="spark://$HOST:$MASTER_PORT"
for i in $(seq 1 "$NUM_WORKERS"); do
    mkdir -p "$RUN_DIR/worker-$i"
    launch "worker-$i" org.apache.spark.deploy.worker.Worker "$MASTER_URL" \
        --host "$HOST" --cores "$WORKER_CORES" --memory "$WORKER_MEMORY" \
        --webui-port $((WORKER_WEBUI_PORT + i - 1)) --work-dir "$RUN_DIR/worker-$i"
done

# Wait until the master's JSON status lists NUM_WORKERS ALIVE workers.
if ! "$PYTHON" - "http://$HOST:$MASTER_WEBUI_PORT/json/" "$NUM_WORKERS" "$START_TIMEOUT" "$RUN_DIR" <<'PY'
import glob, json, os, sys, time, urllib.request

url, wanted, timeout, run_dir = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline, alive = time.time() + timeout, -1
while time.time() < deadline:
    for pidfile in glob.glob(os.path.join(run_dir, "*.pid")):
        pid = int(open(pidfile).read())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            sys.exit(f"start-cluster: {os.path.basename(pidfile)[:-4]} (PID {pid}) exited; see its log in {run_dir}")
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            status = json.load(resp)
        alive = sum(1 for w in status.get("workers", []) if w.get("state") == "ALIVE")
        if alive >= wanted:
            print(f"start-cluster: master {status.get('url')} has {alive} ALIVE workers")
            sys.exit(0)
    except (OSError, ValueError):  # not listening yet, or a page that is not JSON yet
        pass
    time.sleep(1)
sys.exit(f"start-cluster: after {timeout:.0f}s the master at {url} has {max(alive, 0)} of {wanted} workers ALIVE")
PY
then
    echo "start-cluster: stopping what was started" >&2
    "$(dirname "$0")/stop-cluster.sh" >&2 || true
    exit 1
fi
echo "$MASTER_URL" >"$RUN_DIR/master-url"
echo "$MASTER_URL"
