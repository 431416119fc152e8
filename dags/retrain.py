"""retrain: dvc pull -> DVC stages in dvc.yaml order (training on GPU workers) -> dvc push -> publish -> register
-> promotion gate."""
from __future__ import annotations

from airflow.providers.standard.operators.bash import BashOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, chain, dag, task

from common.assets import CHAMPION, RETRAIN_REQUEST
from common.settings import (
    DEFAULT_ARGS,
    GPU_POOL,
    GPU_QUEUE,
    SH_BIN,
    SH_HOME,
    TIMEOUT,
    gpu_executor_config,
    home,
)

# dvc.yaml stage order (tests/dags checks it); GPU_STAGES go to the GPU queue and pool.
STAGES = ["ingest", "validate", "features", "train_baseline@tfidf", "train_baseline@image",
          "train_baseline@text", "train_baseline@metadata", "train_fusion", "stack", "evaluate", "audit"]
GPU_STAGES = {"train_baseline@image", "train_fusion"}
JOIN = "none_failed_min_one_success"


def in_workspace(command: str) -> str:
    # set -e: any failing step (cd, pull, repro) fails the task; `if` conditions are exempt by design.
    return f"set -e; cd {SH_HOME}; export PATH={SH_BIN}:$PATH DVC_NO_ANALYTICS=1; {command}"


# The catalog comes from the default remote; pipeline outputs go to (and come back from) a remote named
# `artifacts` when one is configured. Without remotes (tests, a bare workspace) both are no-ops; when a remote
# exists, a failing pull or push fails the task.
PULL = ("if dvc remote list | grep -q .; then dvc pull -q data.dvc; fi; "
        "if dvc remote list | grep -q '^artifacts[[:space:]]'; then dvc pull -q -r artifacts --allow-missing; fi")
PUSH = "if dvc remote list | grep -q '^artifacts[[:space:]]'; then dvc push -q -r artifacts; fi"


@dag(
    dag_id="retrain",
    # No start_date: with one in the past, Airflow schedules the latest missed Sunday as soon as the DAG
    # appears (catchup=False still runs one), i.e. an hour of training from starting a UI. Without it,
    # run_immediately=False makes the first scheduled run the next Sunday 03:00.
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC", run_immediately=False),
                                 assets=RETRAIN_REQUEST),
    catchup=False, max_active_runs=1,  # one `dvc repro` per workspace
    default_args=DEFAULT_ARGS, tags=["deepfusion", "training"],
    params={
        "mode": Param("full", enum=["full", "register_only", "promote_only"],
                      description="full pipeline, or only register the current model, or only run the gate"),
        "backbone": Param("", type="string",
                          description="timm backbone for the image tower, at its own widths ('' = params.yaml)"),
        "epochs": Param(0, type="integer", minimum=0, description="epochs for every training (0 = params.yaml)"),
        "force": Param(False, type="boolean", description="rerun stages even if DVC says they are up to date"),
    },
)
def retrain():
    @task.branch(execution_timeout=TIMEOUT["quick"])
    def choose(params: dict) -> str:
        return {"full": "configure", "register_only": "to_register", "promote_only": "to_promote"}[params["mode"]]

    @task(execution_timeout=TIMEOUT["quick"])
    def configure(params: dict) -> dict:
        from components.ops.run_params import apply_overrides, run_overrides

        return apply_overrides(home(), run_overrides(params))

    dvc_pull = BashOperator(task_id="dvc_pull", bash_command=in_workspace(PULL), execution_timeout=TIMEOUT["io"])
    force = "{{ '-f ' if params.force else '' }}"
    stages = [
        # retries=1: a stage is deterministic, but its worker may be lost mid-run (DVC resumes from the cache).
        BashOperator(task_id=s.replace("@", "_"), bash_command=in_workspace(f"dvc repro {force}-s {s}"), retries=1,
                     execution_timeout=TIMEOUT["training" if s in GPU_STAGES or "train" in s else "stage"],
                     **({"queue": GPU_QUEUE, "pool": GPU_POOL, "executor_config": gpu_executor_config()}
                        if s in GPU_STAGES else {}))
        for s in STAGES
    ]
    dvc_push = BashOperator(task_id="dvc_push", bash_command=in_workspace(PUSH), execution_timeout=TIMEOUT["io"])

    @task(execution_timeout=TIMEOUT["registry"])
    def publish() -> dict:
        """Params, history, metrics, plots and the model of this pipeline result to MLflow, once."""
        import contextlib

        from components.config import load_params
        from components.ops import publish as ops_publish

        with contextlib.chdir(home()):
            return ops_publish.publish(load_params())

    @task(trigger_rule=JOIN, execution_timeout=TIMEOUT["registry"])  # idempotent: a retry returns the same version
    def register() -> str:
        import contextlib

        from components.config import load_params
        from components.ops import registry

        with contextlib.chdir(home()):
            return registry.register(load_params())

    @task(trigger_rule=JOIN, execution_timeout=TIMEOUT["registry"])
    def promote(params: dict) -> bool:
        import contextlib

        from airflow.sdk.exceptions import AirflowSkipException

        from components.config import load_params
        from components.ops import registry

        if params["mode"] == "register_only":
            raise AirflowSkipException("register_only: the promotion gate is not run")
        with contextlib.chdir(home()):
            return registry.promote(load_params()).promote

    @task.short_circuit(execution_timeout=TIMEOUT["quick"])
    def promoted(decision: bool) -> bool:
        return decision

    @task(outlets=[CHAMPION], execution_timeout=TIMEOUT["quick"])
    def announce_champion() -> None:
        """Emits the CHAMPION asset: the serving side reloads models:/deepfusion@champion."""

    # Empty hops keep the branch from skipping register/promote directly in the full run.
    to_register, to_promote = EmptyOperator(task_id="to_register"), EmptyOperator(task_id="to_promote")
    branch, cfg, pub, reg, gate = choose(), configure(), publish(), register(), promote()
    chain(branch, cfg, dvc_pull, *stages, dvc_push, pub, reg, gate)
    branch >> to_register >> reg
    branch >> to_promote >> gate
    promoted(gate) >> announce_champion()


retrain()
