"""Which retrieval-tower recipe searches best: the train_retrieval stage with params overrides, judged on
validation (printed, never asserted).

    .venv/bin/python research/retrieval_recipes.py WORKSPACE --out DIR [--set train_retrieval.KEY=VALUE ...]

WORKSPACE: a finished run up to train_fusion (its ingest, features and fusion network). The stage runs as
`dvc repro train_retrieval` would, with the overrides, but writes its towers and metrics to DIR (the workspace's
own outputs stay as they are), then prints the kept epoch's validation figures beside the fusion space's, and
every epoch's. Two recipes run side by side as two processes, one thread each (OMP_NUM_THREADS=1), share a
machine fairly: compare their validation scores, never their wall times.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.config import deep_merge, dotted, load_raw, params_from_dict  # noqa: E402
from components.pipeline import train_retrieval  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--out", type=Path, required=True, help="a folder for this recipe's towers and metrics")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="params.yaml override, e.g. train_retrieval.colour=false (repeatable)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")  # epochs
    ws = args.workspace.resolve()
    raw = load_raw(ws / "params.yaml")
    raw = deep_merge(raw, {"paths": {k: str(ws / v) for k, v in raw["paths"].items() if isinstance(v, str)}})
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train_retrieval.views=1")
        raw = deep_merge(raw, dotted(key, value))
    raw = deep_merge(raw, {"paths": {"train_retrieval": str(args.out.resolve())}})
    metrics = train_retrieval.run(params_from_dict(raw))
    (args.out / "recipe.json").write_text(json.dumps({"sets": args.sets}, indent=1))
    val = metrics["val"]
    print(f"recipe {args.sets or 'as in params.yaml'}: kept epoch {metrics['best_epoch']}")
    for name in ("fusion_space", "retrieval"):
        v = val[name]
        print(f"  {name:12s} title->image R@1 {v['text_to_image_recall_at_1']:.3f} R@10 "
              f"{v['text_to_image_recall_at_10']:.3f}  image->title R@1 {v['image_to_text_recall_at_1']:.3f} "
              f"R@10 {v['image_to_text_recall_at_10']:.3f}  mean R@10 {v['score']:.3f}")
    for row in metrics["history"][1:]:
        print(f"  epoch {row['epoch']:2d} loss {row['loss']:.3f} mean R@10 {row['score']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
