#!/usr/bin/env bash
# The reclake pipeline as a chain of cluster jobs: each stage is `reclake pipeline --only STAGE`,
# Spark stages through deploy/spark/submit.sh, Ray stages through `ray job submit`. A stage
# whose inputs are unchanged ends at once saying so; rerunning the chain after a failure resumes
# at the stage that failed (audit/pipeline keeps the state). Run from the repository root:
#
#   CONFIG=configs/my-lake.yaml PROFILE=yarn RAY_ADDRESS=http://ray-head:8265 \
#       deploy/pipeline/run-on-cluster.sh
#   DRY_RUN=1 deploy/pipeline/run-on-cluster.sh     # print the commands, run nothing
#
# CONFIG: the lake's config file (default configs/default.yaml); PROFILE: the spark-submit
# profile (deploy/spark/profiles/NAME.conf, default yarn); RAY_ADDRESS: the Ray Jobs API.
set -euo pipefail

CONFIG="${CONFIG:-configs/default.yaml}"
PROFILE="${PROFILE:-yarn}"
RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"

run() {
    echo "+ $*" >&2
    if [[ -z "${DRY_RUN:-}" ]]; then "$@"; fi
}
spark_stage() { run deploy/spark/submit.sh --profile "$PROFILE" pipeline --config "$CONFIG" --only "$1"; }
ray_stage() {
    run ray job submit --address "$RAY_ADDRESS" --runtime-env deploy/ray/runtime-env.yaml \
        -- reclake --config "$CONFIG" pipeline --only "$1"
}

spark_stage ingest
spark_stage transform
spark_stage split
spark_stage als
spark_stage evaluate
ray_stage train
ray_stage tune
ray_stage embed
spark_stage influence
