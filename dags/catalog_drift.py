"""catalog_drift: each new batch in the landing area -> GX validation -> champion scoring + Evidently drift
report (stored, logged to MLflow) -> NEW_CATALOG, and RETRAIN_REQUEST when drift crosses params.drift.
Started by the landing watcher seconds after an upload, and hourly as the fallback for anything it missed."""
from __future__ import annotations

from pathlib import Path

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from common.assets import LANDING_READY, NEW_CATALOG, RETRAIN_REQUEST
from common.settings import DEFAULT_ARGS, START, TIMEOUT, home, landing


@dag(dag_id="catalog_drift", start_date=START, catchup=False, max_active_runs=1, default_args=DEFAULT_ARGS,
     schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("@hourly", timezone="UTC"), assets=[LANDING_READY]),
     tags=["deepfusion", "monitoring"])
def catalog_drift():
    @task(execution_timeout=TIMEOUT["quick"])
    def find_batches() -> list[dict]:
        from components.orchestration.landing import pending_batches

        return pending_batches(landing())

    # Reported earlier but not categorized yet (categorize failed or never ran): announced again below.
    @task(execution_timeout=TIMEOUT["quick"])
    def waiting_batches() -> list[str]:
        from components.orchestration.landing import awaiting_categorize

        return awaiting_categorize(landing())

    @task(execution_timeout=TIMEOUT["quick"])
    def model() -> str:
        from components.orchestration.landing import serving_model

        return serving_model(home())

    # A rejected batch is not transient: it is moved to _failed/ with its report.
    @task(retries=0, execution_timeout=TIMEOUT["batch"])
    def validate_batch(batch: str, content_md5: str) -> dict:
        from components.orchestration.landing import check_batch

        return check_batch(home(), batch, content_md5)

    # Failures come back as results: the batch stays unmarked and the next run retries it.
    @task(retries=0, execution_timeout=TIMEOUT["batch"])
    def drift_report(batch: str, content_md5: str, model_uri: str) -> dict:
        from components.orchestration.landing import drift_batch

        return drift_batch(home(), batch, content_md5, model_uri)

    # all_done: even if a report task dies outright, the batches that succeeded (already `reported`) are
    # announced and categorized.
    @task(outlets=[NEW_CATALOG], trigger_rule=TriggerRule.ALL_DONE, execution_timeout=TIMEOUT["quick"])
    def announce_batches(found: list[dict], results: list[dict | None], waiting: list[str], *,
                         outlet_events=None) -> list[str]:
        # Names, not paths: categorize resolves each inside the landing area (an event cannot point elsewhere).
        # A waiting name that came back as new content this run counts only if that content was reported.
        again = {Path(f["batch"]).name for f in found}
        batches = sorted({Path(r["batch"]).name for r in results if r and not r.get("error")}
                         | (set(waiting) - again))
        if not batches:  # nothing new (or nothing succeeded): no event, so categorize does not run for nothing
            raise AirflowSkipException("no batch to announce")
        outlet_events[NEW_CATALOG].extra = {"batches": batches}
        return batches

    @task.short_circuit(trigger_rule=TriggerRule.ALL_DONE, execution_timeout=TIMEOUT["quick"])
    def drifted(results: list[dict | None]) -> bool:
        return any(r and r["drift_detected"] for r in results)

    @task(outlets=[RETRAIN_REQUEST], execution_timeout=TIMEOUT["quick"])
    def request_retrain(results: list[dict | None], *, outlet_events=None) -> None:
        outlet_events[RETRAIN_REQUEST].extra = {"drifted": [r["batch"] for r in results if r and r["drift_detected"]]}

    @task(trigger_rule=TriggerRule.ALL_DONE, execution_timeout=TIMEOUT["quick"])
    def check_failures(found: list[dict], results: list[dict | None]) -> None:
        """The run shows red for any batch that was rejected or whose report failed, after the others went on."""
        done = {r["batch"] for r in results if r and not r.get("error")}
        errors = {r["batch"]: r["error"] for r in results if r and r.get("error")}
        failed = [f"{b}: {errors.get(b, 'rejected (see landing/_failed/)')}" for f in found
                  if (b := f["batch"]) not in done]
        if failed:
            raise AirflowFailException("batches not processed:\n" + "\n".join(failed))

    found = find_batches()
    checked = validate_batch.expand_kwargs(found)
    results = drift_report.partial(model_uri=model()).expand_kwargs(checked)
    announce_batches(found, results, waiting_batches())
    drifted(results) >> request_retrain(results)
    check_failures(found, results)


catalog_drift()
