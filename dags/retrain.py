"""retrain: configure the run's workspace -> DVC stages as dvc.yaml's graph allows (independent ones in parallel,
training on GPU workers), each pulling its inputs and pushing its outputs -> publish -> register -> promotion gate."""
from __future__ import annotations

from datetime import timedelta

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
from components.experts import EXPERTS
from components.orchestration import stage_graph

# The stages and what each needs, from the project's dvc.yaml (tests/dags checks it against DVC's own graph).
# GPU_STAGES (the experts with an image tower: convolutions are what a GPU speeds up) go to the GPU queue and pool.
UPSTREAM = stage_graph.read(home())
STAGES = list(UPSTREAM)
FINAL = stage_graph.sinks(UPSTREAM)
GPU_STAGES = {e.stage for e in EXPERTS if "image" in e.reads and not e.linear}
JOIN = "none_failed_min_one_success"


def in_home(command: str) -> str:
    # set -e: any failing step (cd, pull, repro) fails the task; `if` conditions are exempt by design.
    return f"set -e; cd {SH_HOME}; export PATH={SH_BIN}:$PATH DVC_NO_ANALYTICS=1; {command}"


# Every stage task works in its own folder of the run's workspace (orchestration.run_workspace: tracked params.yaml
# and dvc.lock are never edited by a run), rebuilt from RUN_SPEC and the run's dvc.lock so far (RUN_LOCK: the
# XComs of every stage before it, merged), so any stage may run on a machine that shares no disk with the others.
# The catalog comes from the project's default remote; a stage pulls its inputs from and pushes its outputs to the
# remote `artifacts` when one is configured, else takes them from the DVC cache. The last line it prints (its XCom)
# is its own stage's entry of the lock.
DATA = "if [ -f data.dvc ] && dvc remote list | grep -q .; then dvc pull -q data.dvc; fi; "
ARTIFACTS = "dvc remote list | grep -q '^artifacts[[:space:]]'"


def unreachable(stage: str, what: str) -> str:
    # `-q` hides DVC's own error too: the log must still say what failed and what to do.
    return (f"{{ echo \"retrain: {what} the DVC remote 'artifacts' failed for stage {stage}: the artifact store is "
            "down or unreachable from this worker (dvc remote list, the store's health check), or this worker's disk "
            "is full (df -h). The task retries once by itself; after that, fix the cause and clear the task.\" >&2; "
            "exit 1; }")


def stage_command(stage: str, force: str) -> str:
    return in_home(
        (DATA if stage == "ingest" else "")
        + 'cd "$(python -m components.orchestration.run_workspace materialize)"; '
        + f"if {ARTIFACTS}; then dvc pull -q -r artifacts --allow-missing --with-deps {stage} "
        + f"|| {unreachable(stage, 'pulling the inputs from')}; "
        + f"else dvc checkout -q --allow-missing --with-deps {stage}; fi; "
        + f"dvc repro {force}-s {stage}; "
        + f"if {ARTIFACTS}; then dvc push -q -r artifacts {stage} "
        + f"|| {unreachable(stage, 'pushing the outputs to')}; fi; "
        + "python -m components.orchestration.run_workspace lock")


def task_id(stage: str) -> str:
    return stage.replace("@", "_")


def locks_of(stages: list[str] | tuple[str, ...]) -> str:
    """Jinja for the locks the tasks of `stages` printed, space-separated (run_workspace merges them)."""
    if not stages:
        return ""
    ids = ", ".join(f"'{task_id(s)}'" for s in stages)
    return "{{ (ti.xcom_pull(task_ids=[" + ids + "]) or []) | select | join(' ') }}"


def run_workspace(stages: list[str]):
    """The run's workspace, outputs in place, for the Python steps after the stages; when `configure` did not run
    (register_only, promote_only), the current pipeline result: the latest finished run's, else the project's."""
    from airflow.sdk import get_current_context

    from components.orchestration.run_workspace import checked_out

    ti = get_current_context()["ti"]
    spec = ti.xcom_pull(task_ids="configure")
    if not spec:
        from components.orchestration.run_workspace import current

        return current(home())
    locks = ti.xcom_pull(task_ids=[task_id(s) for s in stages]) or []  # each stage's own entry
    return checked_out(home(), spec["run_id"], spec["overrides"], [lock for lock in locks if lock])


@dag(
    dag_id="retrain",
    # No start_date: with one in the past, Airflow schedules the latest missed Sunday as soon as the DAG
    # appears (catchup=False still runs one), i.e. an hour of training from starting a UI. Without it, the first
    # run is the next Sunday 03:00 only if run_immediately is a zero timedelta: `False` is treated like the
    # default (Airflow 3.1's _calc_first_run still runs the past Sunday when it is under a tenth of the week old,
    # i.e. on Sundays until 19:48 UTC).
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 0", timezone="UTC",
                                                                run_immediately=timedelta(0)),
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

    # On the GPU queue: the worker that trains decides whether the GPU profile applies (a CUDA device visible).
    @task(queue=GPU_QUEUE, execution_timeout=TIMEOUT["quick"])
    def configure(params: dict) -> dict:
        from airflow.sdk import get_current_context

        from components.orchestration.run_params import run_params
        from components.orchestration.run_workspace import materialize, prune

        run_id = get_current_context()["run_id"]
        overrides = run_params(home(), params)
        materialize(home(), run_id, overrides)  # a bad override fails here, before any stage runs
        prune(home(), current=run_id)
        return {"run_id": run_id, "overrides": overrides}

    force = "{{ '-f ' if params.force else '' }}"
    spec = "{{ ti.xcom_pull(task_ids='configure') | tojson }}"
    stages = {
        # retries=1: a stage is deterministic, but its worker may be lost mid-run (DVC resumes from the cache).
        s: BashOperator(task_id=task_id(s), bash_command=stage_command(s, force), retries=1, append_env=True,
                        env={"RUN_SPEC": spec, "RUN_LOCK": locks_of(stage_graph.ancestors(UPSTREAM, s)),
                             "RUN_STAGE": s},
                        execution_timeout=TIMEOUT["training" if s in GPU_STAGES or "train" in s else "stage"],
                        **({"queue": GPU_QUEUE, "pool": GPU_POOL, "executor_config": gpu_executor_config()}
                           if s in GPU_STAGES else {}))
        for s in STAGES
    }

    @task(execution_timeout=TIMEOUT["registry"])
    def publish() -> dict:
        """Params, history, metrics, plots and the model of this pipeline result to MLflow, once."""
        import contextlib

        from components.config import load_params
        from components.lifecycle import publish as ops_publish
        from components.orchestration.run_workspace import mark_latest

        ws = run_workspace(STAGES)
        with contextlib.chdir(ws):
            published = ops_publish.publish(load_params())
        mark_latest(home(), ws)  # drift, categorize and register_only now use this run's result
        return published

    @task(trigger_rule=JOIN, execution_timeout=TIMEOUT["registry"])  # idempotent: a retry returns the same version
    def register() -> str:
        import contextlib

        from components.config import load_params
        from components.lifecycle import registry
        from components.orchestration.champion_run import Trail

        ws = run_workspace(STAGES)
        with contextlib.chdir(ws):
            return registry.register(load_params(), Trail(ws))

    @task(trigger_rule=JOIN, execution_timeout=TIMEOUT["registry"])
    def promote(params: dict) -> bool:
        import contextlib

        from airflow.sdk.exceptions import AirflowSkipException

        from components.config import load_params
        from components.lifecycle import registry
        from components.orchestration.champion_run import Trail

        if params["mode"] == "register_only":
            raise AirflowSkipException("register_only: the promotion gate is not run")
        ws = run_workspace(STAGES)
        with contextlib.chdir(ws):
            return registry.promote(load_params(), Trail(ws)).promote

    @task.short_circuit(execution_timeout=TIMEOUT["quick"])
    def promoted(decision: bool) -> bool:
        return decision

    @task(outlets=[CHAMPION], execution_timeout=TIMEOUT["quick"])
    def announce_champion() -> None:
        """Emits the CHAMPION asset: the serving side reloads models:/deepfusion@champion."""

    # Empty hops keep the branch from skipping register/promote directly in the full run.
    to_register, to_promote = EmptyOperator(task_id="to_register"), EmptyOperator(task_id="to_promote")
    branch, cfg, pub, reg, gate = choose(), configure(), publish(), register(), promote()
    chain(branch, cfg)
    for s, ups in UPSTREAM.items():
        for up in ups or [None]:
            (stages[up] if up else cfg) >> stages[s]
    for s in FINAL:
        stages[s] >> pub
    chain(pub, reg, gate)
    branch >> to_register >> reg
    branch >> to_promote >> gate
    promoted(gate) >> announce_champion()


retrain()
