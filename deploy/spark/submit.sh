#!/usr/bin/env bash
# Run one reclake stage through spark-submit.
#
#   deploy/spark/submit.sh [--dry-run] STAGE [global and stage flags...]
#   deploy/spark/submit.sh ingest --lake ./lake --source-format taobao --path data/UserBehavior.csv
#   SPARK_MASTER=spark://head:7077 deploy/spark/submit.sh transform --lake s3a://bucket/lake
#
# What it does:
#   1. zips the `common` and `jobs` packages into build/reclake-deps.zip (shipped with --py-files,
#      so the driver and every executor can import them without installing the project);
#   2. runs spark-submit on jobs/STAGE.py with the Delta JARs resolved by --packages and the Delta
#      SQL extension/catalog set, and passes `--set spark.delta_pip=false` so the SparkSession
#      factory does not also add them through delta.configure_spark_with_delta_pip.
#
# Environment:
#   SPARK_MASTER       master URL (default local[2])
#   DELTA_VERSION      io.delta:delta-spark_4.2_2.13 version (default 4.4.0; must suit the Spark)
#   EXTRA_PACKAGES     more Maven coordinates for --packages, comma-separated
#                      (e.g. org.apache.hadoop:hadoop-aws:3.5.0 for s3a:// lakes)
#   SPARK_SUBMIT_ARGS  extra spark-submit options, split on whitespace
#                      (e.g. "--driver-memory 8g --conf spark.executor.memory=8g")
#   SPARK_SUBMIT       spark-submit to use (default: $SPARK_HOME/bin/spark-submit, then
#                      spark-submit on PATH, then the repo's .venv/bin/spark-submit)
#   PYTHON             interpreter that builds the zip (default: .venv/bin/python, then python3)
#   DRY_RUN=1          print the command (shell-quoted) instead of building the zip and running it
#                      (same as --dry-run before or right after STAGE)
#
# STAGE must be a spark-submit entry point: a jobs/STAGE.py that ends with
# `sys.exit(run_stage("STAGE"))` (not cli.py, a private _module or a helper package).
#
# Paths are absolute, so it runs from any directory; relative --lake / --path values are taken
# relative to the directory you run it from.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PROG="deploy/spark/submit.sh"

# the spark-submit entry points: jobs/NAME.py whose __main__ hands over to run_stage("NAME")
stages() {
    local f name
    for f in "$ROOT"/jobs/*.py; do
        [[ -e "$f" ]] || continue
        name="$(basename "$f" .py)"
        case "$name" in
            __init__ | cli | _*) ;;
            *) grep -qE "run_stage\([\"']$name[\"']" "$f" && printf '%s\n' "$name" ;;
        esac
    done
    return 0
}

usage() {
    local known
    known="$(stages | tr '\n' ' ')"
    cat >&2 <<USAGE
usage: $PROG [--dry-run] STAGE [flags...]

Runs spark-submit on jobs/STAGE.py; flags are passed to the stage unchanged
(global: --lake PATH --config FILE --set key=value; then the stage's own flags).

stages: ${known:-<none found under $ROOT/jobs>}
env:    SPARK_MASTER (local[2]), DELTA_VERSION (4.4.0), EXTRA_PACKAGES, SPARK_SUBMIT_ARGS,
        SPARK_SUBMIT, DRY_RUN=1 or --dry-run (print the command, run nothing)
USAGE
}

if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi
if [[ $# -lt 1 ]]; then
    echo "$PROG: missing STAGE" >&2
    usage
    exit 2
fi
case "$1" in
    -h | --help | help)
        usage
        exit 0
        ;;
esac

STAGE="$1"
shift
KNOWN_STAGES="$(stages)"
if [[ ! "$STAGE" =~ ^[A-Za-z0-9_]+$ ]] || ! grep -qxF -- "$STAGE" <<<"$KNOWN_STAGES"; then
    echo "$PROG: unknown stage '$STAGE': not a spark-submit entry point; valid stages:" \
        "$(tr '\n' ' ' <<<"$KNOWN_STAGES")" >&2
    usage
    exit 2
fi
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi

DELTA_VERSION="${DELTA_VERSION:-4.4.0}"
DELTA_PACKAGE="io.delta:delta-spark_4.2_2.13:${DELTA_VERSION}"
DEPS_ZIP="$ROOT/build/reclake-deps.zip"

VENV_PY="$ROOT/.venv/bin/python"
ENV_SET=()  # VAR=value pairs this script exports (shown by DRY_RUN)
setenv() {
    export "$1=$2"
    ENV_SET+=("$1=$2")
}

if [[ -z "${SPARK_SUBMIT:-}" ]]; then
    if [[ -n "${SPARK_HOME:-}" && -x "$SPARK_HOME/bin/spark-submit" ]]; then
        SPARK_SUBMIT="$SPARK_HOME/bin/spark-submit"
    elif command -v spark-submit >/dev/null 2>&1; then
        SPARK_SUBMIT="spark-submit"
    elif [[ -x "$ROOT/.venv/bin/spark-submit" ]]; then
        # pip's pyspark: its spark-submit finds SPARK_HOME only when that venv is active
        SPARK_SUBMIT="$ROOT/.venv/bin/spark-submit"
        if [[ -z "${SPARK_HOME:-}" ]]; then
            setenv SPARK_HOME "$("$VENV_PY" -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
        fi
    else
        SPARK_SUBMIT="spark-submit"
    fi
fi
# the driver needs pyyaml, delta-spark & co.: use the project's venv when nothing else is chosen
# (executors then get the same interpreter: common/spark.py sets spark.pyspark.python to it)
if [[ -z "${PYSPARK_PYTHON:-}" && -z "${PYSPARK_DRIVER_PYTHON:-}" && -x "$VENV_PY" ]]; then
    setenv PYSPARK_DRIVER_PYTHON "$VENV_PY"
fi

EXTRA_ARGS=()
if [[ -n "${SPARK_SUBMIT_ARGS:-}" ]]; then
    read -r -a EXTRA_ARGS <<<"$SPARK_SUBMIT_ARGS"
fi

CMD=(
    "$SPARK_SUBMIT"
    --master "${SPARK_MASTER:-local[2]}"
    --packages "$DELTA_PACKAGE${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"
    --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
    --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog
    --py-files "$DEPS_ZIP"
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
    "$ROOT/jobs/$STAGE.py"
    --set spark.delta_pip=false
    "$@"
)

build_deps_zip() {
    local py="${PYTHON:-}"
    if [[ -z "$py" ]]; then
        if [[ -x "$VENV_PY" ]]; then
            py="$VENV_PY"
        elif command -v python3 >/dev/null 2>&1; then
            py="python3"
        fi
    fi
    mkdir -p "$(dirname "$DEPS_ZIP")"
    if [[ -n "$py" ]]; then
        "$py" - "$ROOT" "$DEPS_ZIP" <<'PY'
import os
import sys
import zipfile

root, out = sys.argv[1], sys.argv[2]
tmp = out + ".tmp"
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
    for pkg in ("common", "jobs"):
        for d, dirs, files in os.walk(os.path.join(root, pkg)):
            dirs[:] = sorted(x for x in dirs if x != "__pycache__")
            # explicit directory entries: zipimport needs them for packages without __init__.py
            zf.write(d, os.path.relpath(d, root))
            for f in sorted(files):
                if f.endswith((".pyc", ".pyo")):
                    continue
                p = os.path.join(d, f)
                zf.write(p, os.path.relpath(p, root))
os.replace(tmp, out)
PY
    else
        rm -f "$DEPS_ZIP"
        (cd "$ROOT" && zip -qr "$DEPS_ZIP" common jobs -x '*__pycache__*' '*.pyc')
    fi
}

if [[ -n "${DRY_RUN:-}" && "$DRY_RUN" != "0" ]]; then
    echo "# would build $DEPS_ZIP from $ROOT/common and $ROOT/jobs" >&2
    if [[ ${#ENV_SET[@]} -gt 0 ]]; then
        printf '%q ' "${ENV_SET[@]}"
    fi
    printf '%q ' "${CMD[@]}"
    printf '\n'
    exit 0
fi

build_deps_zip
exec "${CMD[@]}"
