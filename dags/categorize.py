"""categorize: batch categorization of new catalog batches with the champion -> predictions + review queue."""
from __future__ import annotations

from airflow.sdk import Param, dag, task

from common.assets import NEW_CATALOG
from common.settings import DEFAULT_ARGS, START, TIMEOUT, home, landing


@dag(dag_id="categorize", schedule=[NEW_CATALOG], start_date=START, catchup=False, max_active_runs=1,
     default_args=DEFAULT_ARGS, tags=["deepfusion", "inference"],
     params={"batch": Param("", type="string", pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$",
                            description="the name of a batch folder in the landing area (manual runs)")})
def categorize():
    @task(execution_timeout=TIMEOUT["quick"])
    def batches(params: dict, *, triggering_asset_events=None) -> list[str]:
        found = [params["batch"]] if params.get("batch") else []
        for event in (triggering_asset_events or {}).get(NEW_CATALOG, []):
            found += event.extra.get("batches", [])
        return sorted(set(found))

    @task(execution_timeout=TIMEOUT["quick"])
    def model() -> str:
        from components.orchestration.landing import serving_model

        return serving_model(home())

    @task(execution_timeout=TIMEOUT["batch"])
    def categorize_batch(batch: str, model_uri: str) -> dict:
        from components.orchestration.landing import categorize_batch as run

        return run(home(), landing(), batch, model_uri)

    categorize_batch.partial(model_uri=model()).expand(batch=batches())


categorize()
