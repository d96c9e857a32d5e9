"""`ovembed eval`'s output for people: a Markdown table of models side by side, and a report that records
the command, date and machine it was made on."""

from __future__ import annotations


def table(rows: list[dict]) -> str:
    """Markdown: one line per dataset and mode, one column per model, with the change against the first model."""
    models = list(dict.fromkeys(r["model"] for r in rows))
    lines = ["| dataset | mode | metric | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for dataset, mode in dict.fromkeys((r["dataset"], r["mode"]) for r in rows):
        by_model = {r["model"]: r for r in rows if r["dataset"] == dataset and r["mode"] == mode}
        metric = "spearman" if "spearman" in next(iter(by_model.values())) else \
            next(m for m in next(iter(by_model.values())) if m.startswith("ndcg@"))
        base = by_model.get(models[0], {}).get(metric)
        cells = []
        for m in models:
            value = by_model.get(m, {}).get(metric)
            change = f" ({(value - base) / base:+.1%})" if base and value is not None and m != models[0] else ""
            cells.append("–" if value is None else f"{value:.4f}{change}")
        lines.append(f"| {dataset} | {mode} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(rows: list[dict], command: str) -> str:
    """A Markdown report that says how it was made: the command, the date, the machine, the models, the table."""
    import datetime

    import openvino

    from ovembed.bench.common import machine

    m = machine()
    lines = [
        "# Retrieval quality", "",
        f"Made by `{command}` on {datetime.date.today().isoformat()}; {m['cpu']}, {m['cores']} cores "
        f"({', '.join(m['isa']) or 'no VNNI/AMX'}), {m['memory_gb']} GB, Python {m['python']}, "
        f"OpenVINO {openvino.__version__}.", "",
        "nDCG@10 for retrieval (BEIR/MTEB definition), Spearman of the score vs the gold similarity for STS; "
        "in brackets the change against the first model. `a→b`: queries of `a` against the corpus of `b`.", "",
        table(rows), "",
        "<details><summary>Every metric</summary>", "",
        "| model | dataset | mode | ndcg@10 | recall@10 | recall@100 | mrr@10 | spearman |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [r.get(k) for k in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "spearman")]
        lines.append(f"| {r['model']} | {r['dataset']} | {r['mode']} | "
                     + " | ".join("" if c is None else f"{c:.4f}" for c in cells) + " |")
    return "\n".join([*lines, "", "</details>", ""])
