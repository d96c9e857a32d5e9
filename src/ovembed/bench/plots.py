"""PNG charts of `ovembed bench` reports (matplotlib, Agg: no display needed).

engine: latency vs tokens, throughput vs batch size, throughput vs concurrent callers, corpus tokens/s.
http: throughput and latency vs concurrent clients, per text length."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def _title(report: dict, what: str) -> str:
    m = report["machine"]
    return f"{what}\n{m['cpu']}, {m['cores']} cores"


def _style(name: str, report: dict) -> dict:
    """Ours drawn thick and on top, so the comparison reads at a glance."""
    if name == report["ours"]:
        return {"linewidth": 2.8, "zorder": 3, "color": "black"}
    return {"linewidth": 1.4, "zorder": 2}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plain_ticks(ax) -> None:
    """Log-scale x axis labelled with the measured values only (16, 128, 512), not powers of ten."""
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _label(report: dict, name: str) -> str:
    return report["labels"].get(name, name)


def engine_plots(report: dict, folder: Path) -> list[Path]:
    """The engine report's charts in `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    ok = {name: r for name, r in report["results"].items() if "error" not in r}
    model = report["name"]
    paths = [_latency(report, ok, model, folder / "latency_vs_tokens.png"),
             _series(report, ok, "batch", "batch size (texts per call)", f"{model}: throughput vs batch size",
                     folder / "throughput_vs_batch.png"),
             _series(report, ok, "concurrency", "concurrent callers (one text per call)",
                     f"{model}: throughput vs concurrent callers", folder / "throughput_vs_concurrency.png")]
    if ok and all("corpus" in r for r in ok.values()):
        paths.append(_corpus(report, ok, model, folder / "corpus_tokens_per_s.png"))
    return paths


def _latency(report: dict, ok: dict, model: str, path: Path) -> Path:
    """p50 per shape as a line; the bar above each point reaches p95, the tick marks p99."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, r in ok.items():
        tokens = [int(t) for t in r["latency"]]
        p50 = [x["p50_ms"] for x in r["latency"].values()]
        p95 = [x["p95_ms"] - x["p50_ms"] for x in r["latency"].values()]
        line = ax.errorbar(tokens, p50, yerr=[[0] * len(p50), p95], marker="o", capsize=4, label=_label(report, name),
                           **_style(name, report))
        ax.scatter(tokens, [x["p99_ms"] for x in r["latency"].values()], marker="_", s=120, color=line[0].get_color())
    ax.set(xscale="log", yscale="log", xlabel="tokens in the one text (1 x N)", ylabel="latency ms (p50, bar to p95, – p99)",
           title=_title(report, f"{model}: latency of one text"))
    ax.set_xticks([int(t) for t in next(iter(ok.values()))["latency"]] if ok else [])
    _plain_ticks(ax)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _series(report: dict, ok: dict, key: str, xlabel: str, what: str, path: Path) -> Path:
    """texts/s against batch size or concurrent callers, one line per backend."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, r in ok.items():
        xs = [int(x) for x in r[key]]
        ax.plot(xs, [v["texts_per_s"] for v in r[key].values()], marker="o", label=_label(report, name),
                **_style(name, report))
    tokens = report["workload"]["throughput_tokens"]
    ax.set(xscale="log", xlabel=xlabel, ylabel=f"texts/s ({tokens} tokens each)", title=_title(report, what))
    ax.set_xticks([int(x) for x in next(iter(ok.values()))[key]] if ok else [])
    _plain_ticks(ax)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _corpus(report: dict, ok: dict, model: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.5, 4))
    names = list(ok)
    values = [ok[n]["corpus"]["tokens_per_s"] for n in names]
    colors = ["black" if n == report["ours"] else "tab:blue" for n in names]
    ax.barh([_label(report, n) for n in names], values, color=colors)
    for y, v in enumerate(values):
        ax.text(v, y, f" {v}", va="center", fontsize=8)
    c = next(iter(ok.values()))["corpus"]
    ax.set(xlabel="real tokens/s (padding not counted)",
           title=_title(report, f"{model}: {c['texts']} real paragraphs ({c['tokens']} tokens)\n"
                                f"in length-sorted batches of {c['batch']}"))
    ax.invert_yaxis()
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def _concurrency_ticks(ax, report: dict) -> None:
    ax.set_xticks(sorted({row["concurrency"] for row in report["http"]}))
    _plain_ticks(ax)


def http_plots(report: dict, folder: Path) -> list[Path]:
    """The HTTP report's charts in `folder`: throughput and latency against concurrent clients."""
    folder.mkdir(parents=True, exist_ok=True)
    by_tokens: dict[int, list[dict]] = {}
    for row in report["http"]:
        by_tokens.setdefault(row["tokens"], []).append(row)
    service = f"{report['url']} ({report['model'] or 'default model'})"

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for tokens, rows in by_tokens.items():
        line, = ax.plot([r["concurrency"] for r in rows], [r["texts_per_s"] for r in rows], marker="o",
                        label=f"HTTP, {tokens} tokens")
        engine = (report.get("engine") or {}).get(tokens)
        if engine:
            ax.axhline(engine["batch32_texts_per_s"], linestyle="--", color=line.get_color(),
                       label=f"engine batch 32, {tokens} tokens")
    ax.set(xscale="log", xlabel="concurrent clients (one text per request)", ylabel="texts/s",
           title=_title(report, f"{service}: throughput"))
    _concurrency_ticks(ax, report)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    throughput = _save(fig, folder / "http_throughput_vs_concurrency.png")

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for tokens, rows in by_tokens.items():
        rows = [r for r in rows if r["p50_ms"] is not None]
        xs = [r["concurrency"] for r in rows]
        line, = ax.plot(xs, [r["p50_ms"] for r in rows], marker="o", label=f"p50, {tokens} tokens")
        ax.plot(xs, [r["p95_ms"] for r in rows], linestyle="--", color=line.get_color(), label=f"p95, {tokens} tokens")
        ax.plot(xs, [r["p99_ms"] for r in rows], linestyle=":", color=line.get_color(), label=f"p99, {tokens} tokens")
    ax.set(xscale="log", yscale="log", xlabel="concurrent clients (one text per request)", ylabel="request latency ms",
           title=_title(report, f"{service}: latency"))
    _concurrency_ticks(ax, report)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return [throughput, _save(fig, folder / "http_latency_vs_concurrency.png")]
