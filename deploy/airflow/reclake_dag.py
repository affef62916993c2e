"""Airflow DAG: the reclake pipeline, one task per stage, in `reclake pipeline`'s order.

Copy this file into the DAGs folder and set the Airflow Variables ``reclake_config`` (the lake's
config file, on the workers) and ``reclake_ray_address`` (the Ray Jobs API, http://HEAD:8265).
Each task is ``reclake pipeline --only STAGE``, so a task whose inputs are unchanged finishes at
once saying so, and a retried task resumes where its stage stopped (audit/pipeline). Spark
stages go through ``deploy/spark/submit.sh`` (profile ``yarn``; ``k8s`` on Kubernetes), the Ray
stages through ``ray job submit`` with the runtime env of ``deploy/ray/runtime-env.yaml``. Run
it from a checkout of the repository (``cwd``), as ``deploy/pipeline/run-on-cluster.sh`` does.
``tests/test_deploy.py`` checks the order against ``jobs/pipeline.py`` and that every command
parses with the CLI.
"""

from __future__ import annotations

from datetime import datetime, timedelta

# the commands, {stage} and the Variables filled in per task
SPARK_STAGE = ("deploy/spark/submit.sh --profile yarn pipeline --config {config} "
               "--only {stage}")
RAY_STAGE = ("ray job submit --address {ray} --runtime-env deploy/ray/runtime-env.yaml "
             "-- reclake --config {config} pipeline --only {stage}")
# (stage, runner) in the pipeline's order: ingest -> ... -> influence
STAGES = (
    ("ingest", "spark"),
    ("transform", "spark"),
    ("split", "spark"),
    ("als", "spark"),
    ("evaluate", "spark"),
    ("train", "ray"),
    ("tune", "ray"),
    ("embed", "ray"),
    ("influence", "spark"),
)
REPO = "/opt/reclake"  # the checkout the tasks run in


def command(stage: str, runner: str, config: str, ray: str) -> str:
    template = SPARK_STAGE if runner == "spark" else RAY_STAGE
    return template.format(stage=stage, config=config, ray=ray)


try:  # Airflow 3 ships BashOperator in the standard provider, Airflow 2 in airflow.operators
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # pragma: no cover - Airflow 2
    try:
        from airflow.operators.bash import BashOperator
    except ImportError:  # not on an Airflow worker: the module stays importable for its checks
        BashOperator = None

if BashOperator is not None:  # pragma: no cover - needs Airflow
    from airflow import DAG
    from airflow.models.baseoperator import chain

    with DAG(
        dag_id="reclake_pipeline",
        schedule="@daily",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # one writer per lake at a time
        default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
        tags=["reclake"],
    ) as dag:
        config = "{{ var.value.reclake_config }}"
        ray = "{{ var.value.reclake_ray_address }}"
        tasks = [BashOperator(task_id=stage, cwd=REPO,
                              bash_command=command(stage, runner, config, ray))
                 for stage, runner in STAGES]
        chain(*tasks)
