"""Markdown results generated from artifacts/evaluate/metrics.json, never typed by hand (pure rendering).

The evaluate stage writes comparison.md with it; `deepfusion report` (components.results) puts it into the docs.
"""
from __future__ import annotations

# Published on the full public catalog with their own split (see ../shared/docs/data.md): shown for that
# catalog's taxonomy only.
DEEPFUSION_PUBLISHED = {"metadata-only": (0.808, 0.66), "image-only": (0.858, 0.81), "fusion": (0.864, 0.81)}
PUBLISHED_LEVELS = ("masterCategory", "subCategory", "articleType")


def levels_of(results: dict) -> tuple[str, ...]:
    """The catalog's levels, coarsest first, as evaluate scored them (a model's entries with a macro-F1)."""
    for v in results.values():
        if isinstance(v, dict):
            levels = tuple(k for k, m in v.items() if isinstance(m, dict) and "macro_f1" in m and "n" not in m)
            if levels:
                return levels
    return ()


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def _ci(m: dict, key: str) -> str:
    lo, hi = m.get(f"{key}_ci_low"), m.get(f"{key}_ci_high")
    return "" if lo is None else f" [{pct(lo)}–{pct(hi)}]"


def _views(views: dict, title: str, with_n: bool = False) -> list[str]:
    """One row per view (input variant or slice), one column per model."""
    if not views:
        return []
    models = list(dict.fromkeys(m for v in views.values() for m in v))
    lines = ["", title + ":", "", "| | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for view, row in views.items():
        label = f"{view} (n={next(iter(row.values()))['n']})" if with_n else view
        cells = [f"{pct(row[m]['accuracy'])} / {pct(row[m]['macro_f1'])}" if m in row else "–" for m in models]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def _versus_best(rows: dict, finest: str) -> list[str]:
    """Stacked minus the best single expert of each input, in points, paired bootstrap 95% CI."""
    if not rows:
        return []
    lines = ["", f"Stacked minus the best single expert on that input ({finest}, points; paired bootstrap "
             "95% CI over test products; the last column averages both models over the classes of the test "
             "truth, where the table's macro-F1 also counts any class a model alone predicts):", "",
             "| input | best expert | accuracy | macro-F1 | macro-F1, test classes |", "|---|---|---|---|---|"]
    for view, r in rows.items():
        cells = [f"{100 * r[k]['diff']:+.2f} [{100 * r[k]['ci_low']:+.2f}, {100 * r[k]['ci_high']:+.2f}]"
                 if k in r else "–" for k in ("accuracy", "macro_f1", "macro_f1_truth_classes")]
        lines.append(f"| {view} | {r['expert']} | " + " | ".join(cells) + " |")
    outside = [f"{view}, {m}: " + ", ".join(f"{c} ({n})" for c, n in classes.items())
               for view, r in rows.items() for m, classes in r.get("predicted_outside_truth", {}).items() if classes]
    if outside:
        lines += ["", "Classes a model predicts that no test product holds (products): " + "; ".join(outside) + "."]
    return lines


def comparison_table(results: dict) -> str:
    levels = levels_of(results)
    if not levels:
        return "No results yet: run `dvc repro`.\n"
    finest, parents = levels[-1], levels[:-1][::-1]
    published = levels == PUBLISHED_LEVELS
    models = [k for k in results if isinstance(results[k], dict) and finest in results[k]]
    served = results.get("served_model")
    if served in models:  # the model we register and serve opens the table
        models = [served] + [m for m in models if m != served]
    lines = [
        f"Test split: {results.get('test_products', '?')} products (group-aware split, never used for tuning).",
        "Accuracy and F1 in %, bootstrap 95% CI in brackets.",
        "",
        f"| model | {finest} acc | {finest} macro-F1 | weighted-F1 | "
        + "".join(f"{lvl} acc | " for lvl in parents)
        + "tail F1 |" + (" DeepFusion published acc / macro-F1 |" if published else ""),
        "|---" * (5 + len(parents) + published) + "|",
    ]
    for name in models:
        a = results[name][finest]
        pub = DEEPFUSION_PUBLISHED.get(name)
        pub_s = f" {pct(pub[0])} / {pub[1]:.2f} |" if pub else "  |"
        lines.append(
            f"| {name} | {pct(a['accuracy'])}{_ci(a, 'accuracy')} | {pct(a['macro_f1'])}{_ci(a, 'macro_f1')} "
            f"| {pct(a['weighted_f1'])} | " + "".join(f"{pct(results[name][lvl]['accuracy'])} | " for lvl in parents)
            + f"{pct(a.get('f1_tail'))} |" + (pub_s if published else ""))
    for name in dict.fromkeys([results.get("served_model", "fusion"), "fusion", "tfidf"]):
        b = results.get(name, {}).get("business")
        if b:
            lines += ["", f"{name}, business view ({finest}): "
                      f"ECE {b['ece']:.3f}; hierarchy consistency {pct(b['hierarchy_consistency'])}%; "
                      + "; ".join(f"auto-accept {pct(b[f'coverage_at_{t}'])}% at {t} precision "
                                  f"({b[f'review_per_10k_at_{t}']:.0f} per 10,000 to review)"
                                  for t in ("0.99", "0.995") if f"coverage_at_{t}" in b)]
    lines += _views(results.get("inputs", {}), f"Inputs users really have ({finest} accuracy / macro-F1 in %, "
                    "every test product with that part of its input removed; cut title = its first words only)")
    lines += _versus_best(results.get("stacked_vs_best_expert", {}), finest)
    lines += _views(results.get("slices", {}), f"Slices of the full test input ({finest} accuracy / macro-F1 "
                    "in %; n = products in the slice)", with_n=True)
    fusion = results.get("fusion", {})
    for suffix, space in (("", "the fusion network's space"), ("_tuned", "the retrieval towers' space (what "
                                                                  "search serves)")):
        if f"retrieval{suffix}" in fusion:
            r = fusion[f"retrieval{suffix}"]
            lines += ["", f"Cross-modal retrieval in {space} on {r['queries']} test products (identical title or "
                      f"image counts as a match): title→image R@1 {pct(r['text_to_image_recall_at_1'])}, "
                      f"R@10 {pct(r['text_to_image_recall_at_10'])}, MRR {r['text_to_image_mrr']:.3f}; "
                      f"image→title R@1 {pct(r['image_to_text_recall_at_1'])}, "
                      f"R@10 {pct(r['image_to_text_recall_at_10'])}, MRR {r['image_to_text_mrr']:.3f}."]
        for gallery, g in fusion.get(f"retrieval_kagl{suffix}", {}).items():
            t, i = g["text_to_image"], g["image_to_text"]
            lines += ["", f"KAGL protocol in {space} (Marqo's: seeded test titles, a hit = an image of a product "
                      f"with the identical title), {gallery} gallery ({g['gallery_images']} images, "
                      f"{g['gallery_titles']} titles): title→image hit@1 {pct(t['hit_at_1'])}, hit@10 "
                      f"{pct(t['hit_at_10'])}, recall@10 {pct(t['recall_at_10'])}, MRR {t['mrr']:.3f} "
                      f"({t['queries']} queries); image→title hit@10 {pct(i['hit_at_10'])}, recall@10 "
                      f"{pct(i['recall_at_10'])}, MRR {i['mrr']:.3f}."]
    lines += [] if not published else [
              "", "DeepFusion's published figures are not comparable one-to-one: they come from the full "
              "public catalog (44.4k rows, 54 classes with >= 100 items) with a stratified *random* split that "
              "lets duplicate listings cross from train to test, their \"fusion\" zipped images with another "
              "product's metadata, and their metadata included the parent categories. Ours: 88 articleType "
              "classes (classes under 20 products folded into Other), a split by product group, no parent "
              "labels as input."]
    return "\n".join(lines) + "\n"
