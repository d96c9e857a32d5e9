"""`ovembed eval`: metric maths by hand, input handling, and the harness against published MTEB scores."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from cli_runner import run_cli
from ovembed.bench.common import int8_dot_products
from ovembed.quality.datasets import load_retrieval
from ovembed.quality.metrics import mrr_at_k, ndcg_at_k, recall_at_k, score_run, spearman


def test_ndcg_recall_mrr_on_hand_made_qrels():
    rel = {"d1": 1, "d2": 2}
    ranked = ["x", "d2", "y", "d1"]
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranked, rel, 10) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(ranked, rel, 3) == pytest.approx((2 / math.log2(3)) / idcg)
    assert ndcg_at_k(["d2", "d1"], rel, 10) == pytest.approx(1.0)
    assert recall_at_k(ranked, rel, 2) == 0.5 and recall_at_k(ranked, rel, 4) == 1.0
    assert mrr_at_k(ranked, rel, 10) == 0.5 and mrr_at_k(ranked, rel, 1) == 0.0
    run = {"q1": ranked}  # q2 has qrels but no results: it counts, as zero
    scores = score_run(run, {"q1": rel, "q2": {"d9": 1}}, k=10)
    assert scores["ndcg@10"] == pytest.approx(dcg / idcg / 2) and scores["mrr@10"] == pytest.approx(0.25)


def test_spearman_with_ties_matches_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 200).astype(float), rng.normal(size=200)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)


def _write_beir(folder, packed: bool):
    folder.mkdir()
    files = {
        "corpus.jsonl": "\n".join(json.dumps(r) for r in [{"_id": "d1", "title": "T", "text": "alpha"},
                                                          {"_id": "d2", "title": "", "text": "beta"}]),
        "queries.jsonl": json.dumps({"_id": "q1", "text": "alpha?"}),
        "qrels.tsv": "query-id\tcorpus-id\tscore\nq1\td1\t1\n",
    }
    for name, text in files.items():
        if packed:
            with gzip.open(folder / f"{name}.gz", "wt", encoding="utf-8") as fh:
                fh.write(text)
        else:
            (folder / name).write_text(text)


def test_gzip_folders_read_like_plain_ones_and_titles_are_prepended(tmp_path):
    _write_beir(tmp_path / "plain", packed=False)
    _write_beir(tmp_path / "packed", packed=True)
    plain, packed = load_retrieval(tmp_path / "plain"), load_retrieval(tmp_path / "packed")
    assert plain.corpus == packed.corpus == {"d1": "T alpha", "d2": "beta"}
    assert plain.qrels == packed.qrels == {"q1": {"d1": 1}}


def _eval(*args):
    return subprocess.run([sys.executable, "-m", "ovembed.cli", "eval", *args], capture_output=True, text=True,
                          timeout=600)


def test_missing_files_are_a_clear_error(tmp_path, minilm_int8):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "corpus.jsonl").write_text('{"_id": "d", "text": "x"}\n')
    (tmp_path / "empty").mkdir()
    for data, message in ((tmp_path / "half", "no queries.jsonl"), (tmp_path / "empty", "not a dataset folder"),
                          (tmp_path / "none", "not a folder")):
        proc = run_cli("eval", "--data", data, "--model", minilm_int8, "--no-cache")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory):
    """One embeddings cache for this module's runs over the shared sets: the fp32 MiniLM vectors of the MTEB check
    serve the all-sets check too (about 2 minutes less CI on a 2-core machine)."""
    return tmp_path_factory.mktemp("evalcache")


@pytest.mark.slow
def test_minilm_fp32_lands_on_the_published_mteb_scores(shared_data, minilm_fp32, tmp_path, eval_cache):
    published = {"xquad/en": 0.944, "xquad/de": 0.703, "xquad/es": 0.632,
                 "stsb_multi_mt/en": 0.820, "stsb_multi_mt/de": 0.624}
    data = [str(shared_data / name) for name in published]
    proc = _eval(*[a for d in data for a in ("--data", d)], "--model", str(minilm_fp32), "--json",
                 "--cache-dir", str(eval_cache), "--report", str(tmp_path / "quality.md"))
    assert proc.returncode == 0, proc.stderr
    rows = {r["dataset"]: r for r in json.loads(proc.stdout)}
    for name, score in published.items():
        metric = "spearman" if name.startswith("stsb") else "ndcg@10"
        assert rows[name][metric] == pytest.approx(score, abs=0.005), (name, rows[name])
    assert {"recall@10", "recall@100", "mrr@10"} <= set(rows["xquad/en"])
    report = (tmp_path / "quality.md").read_text()
    assert "| xquad/de | dense | ndcg@10 |" in report and "ovembed eval --data" in report and "cores" in report
    # A rerun reads the corpus vectors from the cache and gives the same numbers.
    again = _eval("--data", data[0], "--model", str(minilm_fp32), "--json", "--cache-dir", str(eval_cache))
    assert json.loads(again.stdout)[0] == rows["xquad/en"]
    assert any(eval_cache.rglob("*.dense.npz"))


def test_a_service_url_scores_like_the_local_folder(server, tiny_m3_fp32, tmp_path):
    sts = tmp_path / "sts"
    sts.mkdir()
    pairs = [("a cat sits", "a cat is sitting", 4.5), ("a dog runs", "stocks fell", 0.2), ("rain", "it rains", 4.0),
             ("bread", "a loaf", 3.1), ("sun", "dark night", 0.5)]
    sts.joinpath("pairs.tsv").write_text("sentence1\tsentence2\tscore\n" + "\n".join("\t".join(map(str, p))
                                                                                     for p in pairs) + "\n")
    local = json.loads(_eval("--data", str(sts), "--model", str(tiny_m3_fp32), "--json", "--no-cache").stdout)
    remote = json.loads(_eval("--data", str(sts), "--model", server.url, "--json", "--no-cache").stdout)
    assert remote[0]["spearman"] == pytest.approx(local[0]["spearman"], abs=1e-6)


def _subset(source, target, n_docs: int, n_queries: int):
    """A small BEIR folder cut from a shared one: its first documents and the queries that point into them."""
    ds = load_retrieval(source)
    docs = list(ds.corpus)[:n_docs]
    qids = [q for q, rel in ds.qrels.items() if set(rel) <= set(docs)][:n_queries]
    target.mkdir(parents=True)
    (target / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": ds.corpus[d]}) + "\n" for d in docs))
    (target / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": ds.queries[q]}) + "\n" for q in qids))
    (target / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{d}\t{r}\n" for q in qids for d, r in ds.qrels[q].items()))
    return target


def test_every_mode_ranks_as_flagembedding_compute_score(shared_data, tmp_path, flag_oracle, tiny_embedder):
    from ovembed.quality.cache import encode
    from ovembed.quality.modes import MODES, NEEDS, Scorer

    ds = load_retrieval(_subset(shared_data / "xquad" / "en", tmp_path / "xq", n_docs=12, n_queries=8))
    docs, qids = list(ds.corpus), list(ds.qrels)
    embedder = tiny_embedder
    outputs = {"dense", "sparse", "colbert"}
    d = encode(embedder, [ds.corpus[x] for x in docs], outputs, "docs", None)
    q = encode(embedder, [ds.queries[x] for x in qids], outputs, "queries", None)
    # The oracle, one pair per call: FlagEmbedding pads a batch and padded tokens would enter its ColBERT max.
    names = {"dense": "dense", "sparse": "sparse", "colbert": "colbert", "hybrid": "colbert+sparse+dense"}
    ref = {mode: np.zeros((len(qids), len(docs))) for mode in MODES}
    max_len = embedder.model.manifest.max_length
    for i, qid in enumerate(qids):
        for j, did in enumerate(docs):
            out = flag_oracle.compute_score([[ds.queries[qid], ds.corpus[did]]], max_query_length=max_len,
                                            max_passage_length=max_len, weights_for_different_modes=[0.4, 0.2, 0.4])
            for mode in MODES:
                ref[mode][i, j] = out[names[mode]][0]
    for mode in MODES:
        assert NEEDS[mode] <= outputs
        ours = Scorer(d, mode, {"dense": 0.4, "sparse": 0.2, "colbert": 0.4}).scores(q)
        assert np.abs(ours - ref[mode]).max() < 2e-3, mode
        # Our ranking is a ranking of the oracle's scores: along our order they never rise by more than noise.
        along = np.take_along_axis(ref[mode], np.argsort(-ours, axis=1, kind="stable"), axis=1)
        assert (np.diff(along, axis=1) < 4e-3).all(), mode
        # Where the oracle's best document clearly leads (random weights make many near-ties), it is ours too.
        top2 = np.sort(ref[mode], axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 4e-3
        assert (np.argmax(ours, axis=1) == np.argmax(ref[mode], axis=1))[clear].all(), mode


def test_all_modes_and_cross_lingual_runs_end_to_end(shared_data, tmp_path, tiny_m3_fp32, minilm_int8):
    en = _subset(shared_data / "xquad" / "en", tmp_path / "xq" / "en", n_docs=20, n_queries=30)
    de = _subset(shared_data / "xquad" / "de", tmp_path / "xq" / "de", n_docs=20, n_queries=30)
    proc = _eval("--data", str(en), "--data", str(de), "--cross-lingual", "--mode", "all", "--json", "--no-cache",
                 "--model", str(tiny_m3_fp32), "--model", str(minilm_int8))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    got = {(r["model"], r["dataset"], r["mode"]) for r in rows}
    datasets = {"xq/en", "xq/de", "xq/en→de", "xq/de→en"}
    assert got == {(tiny_m3_fp32.name, ds, m) for ds in datasets for m in ("dense", "sparse", "colbert", "hybrid")} \
        | {(minilm_int8.name, ds, "dense") for ds in datasets}
    assert "minilm-int8 has no sparse output; mode sparse skipped" in proc.stderr
    for r in rows:
        assert 0 <= r["mrr@10"] <= 1 and r["recall@10"] <= r["recall@100"] <= 1
    minilm = {r["dataset"]: r["ndcg@10"] for r in rows if r["model"] == minilm_int8.name}
    # English MiniLM finds English paragraphs; German questions against English paragraphs are harder.
    assert minilm["xq/en"] > 0.8 and minilm["xq/de→en"] < minilm["xq/en"]


def test_cross_lingual_needs_shared_ids(tmp_path, minilm_int8):
    (tmp_path / "c").mkdir()
    _write_beir(tmp_path / "c" / "a", packed=False)
    (tmp_path / "c" / "b").mkdir()
    for name in ("queries.jsonl", "qrels.tsv"):
        (tmp_path / "c" / "b" / name).write_text((tmp_path / "c" / "a" / name).read_text())
    (tmp_path / "c" / "b" / "corpus.jsonl").write_text('{"_id": "other", "text": "gamma"}\n')
    proc = run_cli("eval", "--data", tmp_path / "c" / "a", "--data", tmp_path / "c" / "b", "--cross-lingual",
                   "--model", minilm_int8, "--no-cache")
    assert proc.returncode == 2 and "shared ids" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_int8_recipes_lose_at_most_001_against_fp32_on_every_shared_set(shared_data, eval_cache, minilm_fp32,
                                                                   minilm_int8, minilm_int8_weights):
    from ovembed.quality import evaluate

    sets = sorted(str(p.parent) for p in shared_data.glob("*/*/pairs.tsv")) + \
        sorted(str(p.parent) for p in shared_data.glob("*/*/corpus.jsonl"))
    assert len(sets) >= 20
    rows = evaluate([str(minilm_fp32), str(minilm_int8), str(minilm_int8_weights)], sets,
                    cache=eval_cache)
    score = {(r["model"], r["dataset"]): r.get("spearman", r.get("ndcg@10")) for r in rows}
    loss = {}
    for quantized in (minilm_int8.name, minilm_int8_weights.name):
        for name in {d for _, d in score}:
            loss[quantized, name] = score[minilm_fp32.name, name] - score[quantized, name]
    # What a user gives up by serving int8: at most 0.01 on any set on CPUs with int8 dot-product units (VNNI,
    # AMX), the ones this project targets. Without them (AVX2 only) int8 sums saturate in 16 bits: measured on a
    # 2-core AMD EPYC, static int8 MiniLM loses 0.0163 on XQuAD zh (a language it barely knows) and scores 0.0195
    # *above* fp32 on XQuAD es; docs/quality.md has the table. A move beyond 0.03 either way means a broken recipe.
    bound = 0.01 if int8_dot_products() else 0.02
    assert max(loss.values()) <= bound, sorted(loss.items(), key=lambda kv: -kv[1])[:5]
    assert min(loss.values()) >= -0.03, sorted(loss.items(), key=lambda kv: kv[1])[:5]
