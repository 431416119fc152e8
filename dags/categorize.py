"""categorize: batch categorization of new catalog batches with the champion -> predictions + review queue.

The champion's version is resolved once per run. Each batch is planned into shards (one, unless it holds more than
`landing.shard_rows` products) and the shards packed into mapped tasks any worker may take (a few small uploads per
task); merge tasks put each batch's shards together atomically, a few batches each
(components.orchestration.landing)."""
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
    def batches(params: dict, *, triggering_asset_events=None) -> list[list[str]]:
        from components.orchestration.landing import in_groups

        found = [params["batch"]] if params.get("batch") else []
        for event in (triggering_asset_events or {}).get(NEW_CATALOG, []):
            found += event.extra.get("batches", [])
        return in_groups(sorted(set(found)))

    @task(execution_timeout=TIMEOUT["quick"])
    def model() -> str:
        from components.orchestration.landing import serving_model

        return serving_model(home())

    @task(execution_timeout=TIMEOUT["io"])
    def plan(groups: list[list[str]], model_uri: str) -> list[list[dict]]:
        from components.orchestration.landing import shard_plan

        return shard_plan(home(), landing(), [name for group in groups for name in group], model_uri)

    @task(execution_timeout=TIMEOUT["batch"])
    def score_shards(specs: list[dict], model_uri: str) -> list[dict]:
        from components.orchestration.landing import score_shards as run

        return run(home(), landing(), specs, model_uri)

    # all_done: a batch's merge runs whatever became of the shards (none for a batch already categorized, a
    # failed one of another batch) and checks its own parts itself.
    @task(execution_timeout=TIMEOUT["io"], trigger_rule="all_done")
    def merge_batches(names: list[str], model_uri: str, scored: list[list[dict]]) -> list[dict]:
        from components.orchestration.landing import merge_group

        return merge_group(home(), landing(), names, model_uri, [s for task in scored or [] if task for s in task])

    groups, uri = batches(), model()
    scored = score_shards.partial(model_uri=uri).expand(specs=plan(groups, uri))
    merge_batches.partial(model_uri=uri, scored=scored).expand(names=groups)


categorize()
