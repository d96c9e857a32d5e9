"""Watching a server under load: its /metrics parsed with prometheus_client, its /health, its RSS sampled every
second, and the leak check over those samples."""

from __future__ import annotations

import threading
import time

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ovembed.bench.common import proc_status
from ovembed.client import Client
from ovembed.errors import OvembedError

METRICS = ("ovembed_queue_texts", "ovembed_queue_texts_high_water", "ovembed_queue_limit_texts",
           "ovembed_overloaded_total", "ovembed_requests_total")


def parse_metrics(text: str) -> dict[str, dict[str, float]]:
    """{metric name: {label: value}} for the queue gauges and the 503 counter (label: the model), and for
    the request counter (label: "route status")."""
    out: dict[str, dict[str, float]] = {name: {} for name in METRICS}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in out and sample.labels:
                labels = sample.labels
                key = labels.get("model") or f"{labels.get('route', '')} {labels.get('status', '')}"
                out[sample.name][key] = sample.value
    return out


def scrape(control: Client) -> dict[str, dict[str, float]] | None:
    """The server's queue and request figures now, or None when /metrics does not answer."""
    try:
        return parse_metrics(control.metrics_text())
    except (OvembedError, ValueError):
        return None


def health_state(control: Client) -> str:
    """/health's status ("ok", "loading", "error"), or why there is none."""
    try:
        return str(control.health().get("status"))
    except OvembedError as exc:
        return f"no answer ({exc})"


def sample_server(control: Client, pid: int | None, stop: threading.Event, started: float, samples: list[dict]) -> None:
    while True:
        row: dict = {"t": round(time.monotonic() - started, 2)}
        if pid is not None:
            status = proc_status(pid)
            row.update(rss_mb=status.get("VmRSS"), anon_mb=status.get("RssAnon"))
        m = scrape(control)
        if m is not None:
            row.update(queue=sum(m["ovembed_queue_texts"].values()),
                       high_water=max(m["ovembed_queue_texts_high_water"].values(), default=None),
                       limit=min(m["ovembed_queue_limit_texts"].values(), default=None),
                       overloaded=sum(m["ovembed_overloaded_total"].values()))
        samples.append(row)
        if stop.wait(1.0):
            return


def leak_check(samples: list[dict], warmup: float) -> dict:
    """Least-squares slope of RSS after the warm-up, and growth: the median of the last fifth of the
    window against the median of the first fifth (medians, so one long batch's transient does not count)."""
    points = [(s["t"], s["rss_mb"]) for s in samples if s["t"] >= warmup and s.get("rss_mb") is not None]
    if len(points) < 10:
        return {"samples": len(points), "slope_mb_per_min": None, "growth_pct": None}
    t, rss = np.array(points).T
    slope = float(np.polyfit(t / 60, rss, 1)[0])
    fifth = max(2, len(rss) // 5)
    first, last = float(np.median(rss[:fifth])), float(np.median(rss[-fifth:]))
    return {"samples": len(points), "window_s": round(float(t[-1] - t[0]), 1), "slope_mb_per_min": round(slope, 2),
            "growth_pct": round(100 * (last - first) / first, 2), "first_mb": round(first, 1),
            "last_mb": round(last, 1), "min_mb": round(float(rss.min()), 1), "max_mb": round(float(rss.max()), 1)}
