"""Run one DAG with dag.test() in this process and print the outcome as JSON (used by the DAG tests)."""
from __future__ import annotations

import json
import sys

from airflow.dag_processing.dagbag import DagBag


def main() -> None:
    dag_id, conf = sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    bag = DagBag()
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    try:
        run = dag.test(run_conf=conf)
    except Exception as exc:  # noqa: BLE001 (a run the form's validation refuses never starts: say so)
        print("DAG_RESULT " + json.dumps({"state": f"refused: {type(exc).__name__}: {exc}", "tasks": {}}))
        return
    states = {ti.task_id + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
              for ti in run.get_task_instances()}
    print("DAG_RESULT " + json.dumps({"state": str(run.state), "tasks": states}))


if __name__ == "__main__":
    main()
