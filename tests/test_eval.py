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

from ovembed.evaluate.retrieval import load_retrieval, mrr_at_k, ndcg_at_k, recall_at_k, score_run, spearman


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
    for data, message in ((tmp_path / "half", "no queries.jsonl"), (tmp_path / "none", "no pairs.tsv")):
        proc = _eval("--data", str(data), "--model", str(minilm_int8), "--no-cache")
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


def test_minilm_fp32_lands_on_the_published_mteb_scores(shared_data, minilm_fp32, tmp_path):
    published = {"xquad/en": 0.944, "xquad/de": 0.703, "xquad/es": 0.632,
                 "stsb_multi_mt/en": 0.820, "stsb_multi_mt/de": 0.624}
    data = [str(shared_data / name) for name in published]
    proc = _eval(*[a for d in data for a in ("--data", d)], "--model", str(minilm_fp32), "--json",
                 "--cache-dir", str(tmp_path / "cache"), "--report", str(tmp_path / "quality.md"))
    assert proc.returncode == 0, proc.stderr
    rows = {r["dataset"]: r for r in json.loads(proc.stdout)}
    for name, score in published.items():
        metric = "spearman" if name.startswith("stsb") else "ndcg@10"
        assert rows[name][metric] == pytest.approx(score, abs=0.005), (name, rows[name])
    assert {"recall@10", "recall@100", "mrr@10"} <= set(rows["xquad/en"])
    assert "| xquad/de | ndcg@10 |" in (tmp_path / "quality.md").read_text()
    # A rerun reads the corpus vectors from the cache and gives the same numbers.
    again = _eval("--data", data[0], "--model", str(minilm_fp32), "--json", "--cache-dir", str(tmp_path / "cache"))
    assert json.loads(again.stdout)[0] == rows["xquad/en"]
    assert any((tmp_path / "cache").rglob("*.npy"))


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
