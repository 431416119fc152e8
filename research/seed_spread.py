"""How far the fusion model's validation figures move with its seed alone (printed, never asserted).

    .venv/bin/python research/seed_spread.py --seeds 42 1 7
    .venv/bin/python research/seed_spread.py --seeds 42 1 7 --set train_fusion.train.epochs=6
    .venv/bin/python research/seed_spread.py --seeds 42 1 7 --stack

One seed of the fusion model is one draw: over seeds its validation articleType accuracy moves by more
than most changes we tried move it. Judge a change (`--set`, any params.yaml key) on the spread, not on
one run. Only the fusion stage is retrained, on the pipeline's current `artifacts/` (features and the
image baseline it starts from stay as `dvc repro` left them); `seed` = the pipeline's own seed gives the
pipeline's own model back (training is seeded). An override outside `train_fusion` (and `seed`) needs
those stages rebuilt first (`dvc exp run`), or the fusion model would not match its inputs. Models go to
a temporary folder; nothing is published to MLflow.

`--stack` also runs the stack and evaluate stages on each seed's fusion network (the seed also draws the
stack's validation folds; the other experts stay the pipeline's): the stacked categorizer's out-of-fold
validation score, and its test figures on every input variant next to the best single expert there.
Those test figures are for reporting the seed spread of what we serve; choose nothing by them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from components.config import deep_merge, dotted, load_raw, params_from_dict
from components.pipeline import evaluate, stack, train_fusion

ROOT = Path(__file__).resolve().parents[1]


def reference(path: Path) -> str:
    if not path.is_file():
        return "not built (run dvc repro)"
    m = json.loads(path.read_text())
    return f"{100 * m['val_article_accuracy']:.2f} % / {m['val_article_macro_f1']:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 7])
    ap.add_argument("--stack", action="store_true",
                    help="also run stack + evaluate per seed (~7 min more each on 2 cores)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="params.yaml override, e.g. train_fusion.train.lr=5.0e-4 (repeatable)")
    args = ap.parse_args()
    os.chdir(ROOT)  # params paths are relative to the project root
    raw = load_raw("params.yaml")
    for item in args.sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train_fusion.train.epochs=6")
        raw = deep_merge(raw, dotted(key, value))
    for stage in ("features", "train_baseline"):
        if not Path(raw["paths"][stage]).is_dir():
            raise SystemExit(f"seed_spread: {raw['paths'][stage]} not found; run `dvc repro train_fusion` first")
    acc: list[float] = []
    f1: list[float] = []
    stacked: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            run_raw = deep_merge(raw, {"seed": seed, "paths": {"train_fusion": f"{tmp}/seed_{seed}",
                                                               "stack": f"{tmp}/stack_{seed}",
                                                               "evaluate": f"{tmp}/evaluate_{seed}"}})
            params = params_from_dict(run_raw)
            m = train_fusion.run(params)
            seconds = json.loads(train_fusion.timings_file(params).read_text())["train_seconds"]
            acc.append(100 * m["val_article_accuracy"])
            f1.append(m["val_article_macro_f1"])
            print(f"seed {seed}: val articleType {100 * m['val_article_accuracy']:.2f} % / "
                  f"{m['val_article_macro_f1']:.4f} (best epoch {m['best_epoch']}, {seconds:.0f} s)",
                  flush=True)
            if args.stack:
                for variant, figures in stack_figures(params, seed).items():
                    stacked.setdefault(variant, []).append(figures)

    def spread(xs: list[float]) -> float:
        return statistics.stdev(xs) if len(xs) > 1 else 0.0

    print(f"fusion over seeds {args.seeds}{' with ' + ' '.join(args.sets) if args.sets else ''}:")
    print(f"  accuracy {statistics.mean(acc):.2f} % (sd {spread(acc):.2f}, {min(acc):.2f}-{max(acc):.2f}); "
          f"macro-F1 {statistics.mean(f1):.4f} (sd {spread(f1):.4f}, {min(f1):.4f}-{max(f1):.4f})")
    for variant, figs in stacked.items():
        a, f = [x for x, _ in figs], [y for _, y in figs]
        print(f"  stacked, test, {variant}: accuracy {statistics.mean(a):.2f} % (sd {spread(a):.2f}, "
              f"{min(a):.2f}-{max(a):.2f}); macro-F1 {statistics.mean(f):.4f} (sd {spread(f):.4f}, "
              f"{min(f):.4f}-{max(f):.4f})")
    base = Path(raw["paths"]["train_baseline"])
    print(f"  the pipeline's validation figures: fusion (seed {raw['seed']}) "
          f"{reference(Path(raw['paths']['train_fusion']) / 'metrics.json')}, "
          f"TF-IDF {reference(base / 'metrics_tfidf.json')}, text-only {reference(base / 'metrics_text.json')}")


def stack_figures(params, seed: int) -> dict[str, tuple[float, float]]:
    """Run stack + evaluate on this seed's fusion network; print and return the stacked categorizer's test
    articleType accuracy (%) and macro-F1 per input variant."""
    with torch.no_grad():
        stack.run(params)
        results = evaluate.run(params)
    spec = json.loads((Path(params.paths.stack) / "metrics.json").read_text())
    print(f"seed {seed}: stack keeps {', '.join(spec['experts'])}; out-of-fold validation score "
          f"{spec['expert_sets_cv_macro_f1']['_'.join(spec['experts'])]:.4f}", flush=True)
    out = {}
    for variant, rows in results["inputs"].items():
        best = results["stacked_vs_best_expert"][variant]["expert"]
        st, ex = rows["stacked"], rows[best]
        out[variant] = (100 * st["accuracy"], st["macro_f1"])
        print(f"seed {seed}: test {variant:<11} stacked {100 * st['accuracy']:.2f} % / {st['macro_f1']:.4f}; "
              f"best expert {best} {100 * ex['accuracy']:.2f} % / {ex['macro_f1']:.4f}", flush=True)
    return out


if __name__ == "__main__":
    main()
