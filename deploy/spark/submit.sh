#!/usr/bin/env bash
# Run one reclake stage through spark-submit.
#
#   deploy/spark/submit.sh [--dry-run] [--profile NAME|FILE] STAGE [global and stage flags...]
#   deploy/spark/submit.sh ingest --lake ./lake --source-format taobao --path data/UserBehavior.csv
#   deploy/spark/submit.sh --profile yarn transform --lake hdfs:///data/lake
#   SPARK_MASTER=spark://head:7077 deploy/spark/submit.sh transform --lake s3a://bucket/lake
#
# What it does:
#   1. reads the profile (deploy/spark/profiles/NAME.conf, spark-submit --properties-file format:
#      local (the default), yarn, k8s; or any FILE): master, deploy mode, resources, Spark conf;
#   2. zips the `common`, `jobs` and `raytrain` packages into build/reclake-deps.zip (shipped with
#      --py-files, so the driver and every executor can import them without installing the project);
#   3. runs spark-submit on jobs/STAGE.py with the Delta JARs resolved by --packages and the Delta
#      SQL extension/catalog set, and passes `--set spark.delta_pip=false` so the SparkSession
#      factory does not also add them through delta.configure_spark_with_delta_pip.
#
# A profile's spark.sql.shuffle.partitions becomes `--set spark.shuffle_partitions=N` (reclake sets
# the shuffle width from its config; a later --set of yours still wins). A profile with
# spark.reclake.appRoot (k8s: local:///opt/reclake) runs the image's copy of the stage,
# APPROOT/jobs/STAGE.py, with no --py-files and no --packages: the image has both baked in.
#
# Environment:
#   PROFILE            profile name or file, like --profile (default local)
#   SPARK_MASTER       master URL, overriding the profile's spark.master (passed as --master)
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

profiles() {
    local f
    for f in "$ROOT"/deploy/spark/profiles/*.conf; do
        [[ -e "$f" ]] && basename "$f" .conf
    done
    return 0
}

usage() {
    local known
    known="$(stages | tr '\n' ' ')"
    cat >&2 <<USAGE
usage: $PROG [--dry-run] [--profile NAME|FILE] STAGE [flags...]

Runs spark-submit on jobs/STAGE.py; flags are passed to the stage unchanged
(global: --lake PATH --config FILE --set key=value; then the stage's own flags).

stages:   ${known:-<none found under $ROOT/jobs>}
profiles: $(profiles | tr '\n' ' ')(deploy/spark/profiles/NAME.conf; default local)
env:      PROFILE, SPARK_MASTER (overrides the profile's), DELTA_VERSION (4.4.0), EXTRA_PACKAGES,
          SPARK_SUBMIT_ARGS, SPARK_SUBMIT, DRY_RUN=1 or --dry-run (print the command, run nothing)
USAGE
}

PROFILE="${PROFILE:-local}"
# options of this script: before STAGE, or right after it
take_options() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dry-run) DRY_RUN=1; NTAKEN=$((NTAKEN + 1)); shift ;;
            --profile)
                if [[ $# -lt 2 ]]; then
                    echo "$PROG: --profile needs a NAME or FILE" >&2
                    exit 2
                fi
                PROFILE="$2"; NTAKEN=$((NTAKEN + 2)); shift 2 ;;
            --profile=*) PROFILE="${1#--profile=}"; NTAKEN=$((NTAKEN + 1)); shift ;;
            *) return 0 ;;
        esac
    done
}
NTAKEN=0
take_options "$@"
shift "$NTAKEN"
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
NTAKEN=0
take_options "$@"
shift "$NTAKEN"

# the profile: a name under deploy/spark/profiles/, or a file
if [[ "$PROFILE" == */* || "$PROFILE" == *.conf ]]; then
    PROFILE_FILE="$PROFILE"
    [[ "$PROFILE_FILE" == /* ]] || PROFILE_FILE="$PWD/$PROFILE_FILE"
else
    PROFILE_FILE="$ROOT/deploy/spark/profiles/$PROFILE.conf"
fi
if [[ ! -f "$PROFILE_FILE" ]]; then
    echo "$PROG: unknown profile '$PROFILE': no file $PROFILE_FILE; profiles:" \
        "$(profiles | tr '\n' ' ')" >&2
    exit 2
fi
# a property of the profile (spark-defaults format: key, whitespace or '=', value; # comments)
profile_get() {
    awk -v key="$1" '
        /^[[:space:]]*(#|$)/ { next }
        {
            line = $0
            sub(/^[[:space:]]+/, "", line)
            k = line; sub(/[[:space:]=].*$/, "", k)
            if (k != key) next
            v = substr(line, length(k) + 1); sub(/^[[:space:]]*=?[[:space:]]*/, "", v)
            sub(/[[:space:]]+$/, "", v)
            val = v
        }
        END { if (val != "") print val }
    ' "$PROFILE_FILE"
}
APP_ROOT="$(profile_get spark.reclake.appRoot)"
PROFILE_PARTITIONS="$(profile_get spark.sql.shuffle.partitions)"

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

MASTER_ARGS=()
if [[ -n "${SPARK_MASTER:-}" ]]; then
    MASTER_ARGS=(--master "$SPARK_MASTER")
fi
PACKAGES="${EXTRA_PACKAGES:-}"
DEPS_ARGS=()
if [[ -z "$APP_ROOT" ]]; then
    PACKAGES="$DELTA_PACKAGE${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}"
    DEPS_ARGS=(--py-files "$DEPS_ZIP")
    APP="$ROOT/jobs/$STAGE.py"
else
    APP="${APP_ROOT%/}/jobs/$STAGE.py"
fi
PACKAGE_ARGS=()
if [[ -n "$PACKAGES" ]]; then
    PACKAGE_ARGS=(--packages "$PACKAGES")
fi
STAGE_SETS=(--set spark.delta_pip=false)
if [[ -n "$PROFILE_PARTITIONS" ]]; then
    STAGE_SETS+=(--set "spark.shuffle_partitions=$PROFILE_PARTITIONS")
fi

CMD=(
    "$SPARK_SUBMIT"
    --properties-file "$PROFILE_FILE"
    ${MASTER_ARGS[@]+"${MASTER_ARGS[@]}"}
    ${PACKAGE_ARGS[@]+"${PACKAGE_ARGS[@]}"}
    --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension
    --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog
    ${DEPS_ARGS[@]+"${DEPS_ARGS[@]}"}
    ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
    "$APP"
    "${STAGE_SETS[@]}"
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
    if [[ -n "$py" && -f "$ROOT/deploy/dist.py" ]]; then
        "$py" "$ROOT/deploy/dist.py" --pyfiles-only "$DEPS_ZIP"
    else
        rm -f "$DEPS_ZIP"
        local pkgs=() p
        for p in common jobs raytrain; do
            [[ -d "$ROOT/$p" ]] && pkgs+=("$p")
        done
        (cd "$ROOT" && zip -qr "$DEPS_ZIP" "${pkgs[@]}" -x '*__pycache__*' '*.pyc')
    fi
}

if [[ -n "${DRY_RUN:-}" && "$DRY_RUN" != "0" ]]; then
    if [[ -z "$APP_ROOT" ]]; then
        echo "# would build $DEPS_ZIP from $ROOT/{common,jobs,raytrain}" >&2
    fi
    if [[ ${#ENV_SET[@]} -gt 0 ]]; then
        printf '%q ' "${ENV_SET[@]}"
    fi
    printf '%q ' "${CMD[@]}"
    printf '\n'
    exit 0
fi

if [[ -z "$APP_ROOT" ]]; then
    build_deps_zip
fi
exec "${CMD[@]}"
