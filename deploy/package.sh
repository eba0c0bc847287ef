#!/usr/bin/env bash
# Build what a Spark cluster needs to run dsel:
#   dist/dsel-<version>-py3-none-any.whl   the dsel wheel (pip wheel --no-deps .)
#   dist/dsel-env.tar.gz                   a packed venv (venv-pack) with the wheel and its pinned
#                                          dependencies, for spark-submit --archives dist/dsel-env.tar.gz#env
#
#   deploy/package.sh
#   spark-submit --master spark://HOST:7077 --deploy-mode client \
#       --packages io.delta:delta-spark_4.2_2.13:4.4.0 \
#       --archives dist/dsel-env.tar.gz#env \
#       --conf spark.pyspark.python=./env/bin/python \
#       --conf spark.pyspark.driver.python=build/dsel-env/bin/python \
#       jobs/run.py --raw ... --target ... --out ... --num-samples K --seed S
#
# Settings (environment):
#   PYTHON           interpreter to build the venv from (default python3); the venv's bin/python links to
#                    it, so every node must have this Python at the same path (see deploy/README.md)
#   DSEL_ENV_DIR     where the venv is built (default build/dsel-env); also the client-mode driver's Python
#   DSEL_DIST        output folder (default dist)
#   DSEL_KEEP_JARS   1 to keep pyspark/jars in the archive (default: left out; executors use the cluster's
#                    Spark jars, and the Python workers only need pyspark's Python code)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
ENV_DIR=${DSEL_ENV_DIR:-build/dsel-env}
DIST=${DSEL_DIST:-dist}
VENV_PACK_VERSION=0.2.0

mkdir -p "$DIST"
echo "package: building the dsel wheel into $DIST/"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$DIST" .
WHEEL=$(ls -t "$DIST"/dsel-*.whl | head -1)

echo "package: creating the venv $ENV_DIR with $WHEEL and its dependencies (pinned by requirements-dev.txt)"
rm -rf "$ENV_DIR"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install --quiet --upgrade pip
# requirements-dev.txt is the lock: used as constraints, it pins versions without adding the test tools.
"$ENV_DIR/bin/python" -m pip install --quiet --constraint requirements-dev.txt "$WHEEL"
"$ENV_DIR/bin/python" -m pip install --quiet "venv-pack==$VENV_PACK_VERSION"

PACK_ARGS=()
if [ "${DSEL_KEEP_JARS:-0}" != 1 ]; then
    PACK_ARGS=(--exclude 'lib/python*/site-packages/pyspark/jars/*')
fi
[ -t 1 ] || PACK_ARGS+=(--quiet)  # the progress bar only on a terminal
echo "package: packing $ENV_DIR into $DIST/dsel-env.tar.gz"
"$ENV_DIR/bin/venv-pack" --prefix "$ENV_DIR" --output "$DIST/dsel-env.tar.gz" --force "${PACK_ARGS[@]}"
ls -l "$WHEEL" "$DIST/dsel-env.tar.gz"
