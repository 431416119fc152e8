"""catalog_drift: each new batch in the landing area -> GX validation -> champion scoring + Evidently drift
report (stored, logged to MLflow) -> NEW_CATALOG, and RETRAIN_REQUEST when drift crosses params.drift.
Started by the landing watcher seconds after an upload, and hourly as the fallback for anything it missed."""
from __future__ import annotations

from pathlib import Path

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from common.assets import LANDING_READY, NEW_CATALOG, RETRAIN_REQUEST
from common.settings import DEFAULT_ARGS, START, TIMEOUT, home, landing


def each(groups: list[list[dict] | None]) -> list[dict]:
    """The items of a mapped task's groups (a group whose task died outright is None)."""
    return [item for group in groups or [] if group for item in group]


@dag(dag_id="catalog_drift", start_date=START, catchup=False, max_active_runs=1, default_args=DEFAULT_ARGS,
     schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@hourly", timezone="UTC"), assets=[LANDING_READY]),
     tags=["deepfusion", "monitoring"])
def catalog_drift():
    # In groups of a few: one task validates and reports each batch of its group (landing.BATCHES_PER_TASK).
    @task(execution_timeout=TIMEOUT["quick"])
    def find_batches() -> list[list[dict]]:
        from components.orchestration.landing import in_groups, pending_batches

        return in_groups(pending_batches(landing()))

    # Reported earlier but not categorized yet (categorize failed or never ran): announced again below.
    @task(execution_timeout=TIMEOUT["quick"])
    def waiting_batches() -> list[str]:
        from components.orchestration.landing import awaiting_categorize

        return awaiting_categorize(landing())

    @task(execution_timeout=TIMEOUT["quick"])
    def model() -> str:
        from components.orchestration.landing import serving_model

        return serving_model(home())

    # Failures come back as results: a rejected batch is in _failed/ with its report, any other stays for the
    # next run (so no retry here), and check_failures turns the run red.
    @task(retries=0, execution_timeout=TIMEOUT["batch"])
    def report_batches(group: list[dict], model_uri: str) -> list[dict]:
        from components.orchestration.landing import report_group

        return report_group(home(), group, model_uri)

    # all_done: even if a report task dies outright, the batches that succeeded (already `reported`) are
    # announced and categorized.
    @task(outlets=[NEW_CATALOG], trigger_rule=TriggerRule.ALL_DONE, execution_timeout=TIMEOUT["quick"])
    def announce_batches(found: list[list[dict]], results: list[list[dict] | None], waiting: list[str], *,
                         outlet_events=None) -> list[str]:
        # Names, not paths: categorize resolves each inside the landing area (an event cannot point elsewhere).
        # A waiting name that came back as new content this run counts only if that content was reported.
        again = {Path(f["batch"]).name for f in each(found)}
        batches = sorted({Path(r["batch"]).name for r in each(results) if not r.get("error")}
                         | (set(waiting) - again))
        if not batches:  # nothing new (or nothing succeeded): no event, so categorize does not run for nothing
            raise AirflowSkipException("no batch to announce")
        outlet_events[NEW_CATALOG].extra = {"batches": batches}
        return batches

    @task.short_circuit(trigger_rule=TriggerRule.ALL_DONE, execution_timeout=TIMEOUT["quick"])
    def drifted(results: list[list[dict] | None]) -> bool:
        return any(r["drift_detected"] for r in each(results))

    @task(outlets=[RETRAIN_REQUEST], execution_timeout=TIMEOUT["quick"])
    def request_retrain(results: list[list[dict] | None], *, outlet_events=None) -> None:
        outlet_events[RETRAIN_REQUEST].extra = {"drifted": [r["batch"] for r in each(results) if r["drift_detected"]]}

    @task(trigger_rule=TriggerRule.ALL_DONE, execution_timeout=TIMEOUT["quick"])
    def check_failures(found: list[list[dict]], results: list[list[dict] | None]) -> None:
        """The run shows red for any batch that was rejected or whose report failed, after the others went on."""
        done = {r["batch"] for r in each(results) if not r.get("error")}
        errors = {r["batch"]: r["error"] for r in each(results) if r.get("error")}
        failed = [f"{b}: {errors.get(b, 'its report task failed (see its log); left for the next run')}"
                  for f in each(found) if (b := f["batch"]) not in done]
        if failed:
            raise AirflowFailException("batches not processed:\n" + "\n".join(failed))

    found = find_batches()
    results = report_batches.partial(model_uri=model()).expand(group=found)
    announce_batches(found, results, waiting_batches())
    drifted(results) >> request_retrain(results)
    check_failures(found, results)


catalog_drift()
