"""categorize: batch categorization of new catalog batches with the champion -> predictions + review queue.

The champion's version is resolved once per run. Each batch is planned into shards (one, unless it holds more than
`landing.shard_rows` products), every shard is a mapped task any worker may take, and one merge task per batch puts
its shards together atomically (components.orchestration.landing)."""
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

    @task(execution_timeout=TIMEOUT["io"])
    def plan(names: list[str], model_uri: str) -> list[dict]:
        from components.orchestration.landing import shard_plan

        return shard_plan(home(), landing(), names, model_uri)

    @task(execution_timeout=TIMEOUT["batch"])
    def score_shard(spec: dict, model_uri: str) -> dict:
        from components.orchestration.landing import score_shard as run

        return run(home(), landing(), spec, model_uri)

    # all_done: a batch's merge runs whatever became of the shards (none for a batch already categorized, a
    # failed one of another batch) and checks its own parts itself.
    @task(execution_timeout=TIMEOUT["io"], trigger_rule="all_done")
    def merge_batch(batch: str, model_uri: str, scored: list[dict]) -> dict:
        from components.orchestration.landing import merge_shards

        return merge_shards(home(), landing(), batch, model_uri, [s for s in scored or [] if s])

    names, uri = batches(), model()
    scored = score_shard.partial(model_uri=uri).expand(spec=plan(names, uri))
    merge_batch.partial(model_uri=uri, scored=scored).expand(batch=names)


categorize()
