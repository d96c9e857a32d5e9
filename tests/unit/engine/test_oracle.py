"""The exported BGE-M3 graph against FlagEmbedding's BGEM3FlagModel on the same tiny weights."""

from __future__ import annotations

import numpy as np
import openvino as ov
import pytest

from ovembed.engine.scoring import colbert_score, combined_score, dense_score, lexical_score

TEXTS = [
    "What is BGE-M3?",
    "BGE-M3 is a multilingual embedding model with dense, sparse and multi-vector outputs.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "机器学习是人工智能的一个分支。",
    "كيف يمكنني إعادة تعيين كلمة المرور؟",
    "a " * 150,
    "",
]


@pytest.fixture(scope="module")
def oracle_out(flag_oracle):
    return flag_oracle.encode(
        TEXTS, batch_size=3, max_length=512, return_dense=True, return_sparse=True, return_colbert_vecs=True
    )


@pytest.fixture(scope="module")
def ours(tiny_m3_model):
    return tiny_m3_model.embed(TEXTS, dense=True, sparse=True, colbert=True)


def test_exported_graph_has_three_named_outputs(tiny_m3_fp32):
    model = ov.Core().read_model(tiny_m3_fp32 / "openvino_model.xml")
    assert [o.get_any_name() for o in model.outputs] == ["dense", "sparse", "colbert"]
    assert [i.get_any_name() for i in model.inputs] == ["inputs_embeds", "attention_mask"]


def test_dense_matches_flagembedding(oracle_out, ours):
    ref = np.asarray(oracle_out["dense_vecs"], dtype=np.float32)
    assert ours.dense.shape == ref.shape
    cos = np.sum(ref * ours.dense, axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(ours.dense, axis=1)
    assert cos.min() >= 0.9999, cos


def test_sparse_matches_flagembedding(oracle_out, ours):
    for ref, got in zip(oracle_out["lexical_weights"], ours.sparse, strict=True):
        ref_ids = sorted(int(k) for k in ref)
        assert got["indices"] == ref_ids
        assert got["indices"] == sorted(got["indices"])
        ref_values = [float(ref[str(i)]) for i in ref_ids]
        np.testing.assert_allclose(got["values"], ref_values, atol=1e-3)
        assert all(v > 0 for v in got["values"])


def test_sparse_drops_special_tokens(ours, tiny_m3_model):
    special = set(tiny_m3_model.manifest.special_token_ids)
    assert {0, 1, 2, 3} <= special  # <s> <pad> </s> <unk>
    for vec in ours.sparse:
        assert not special & set(vec["indices"])


def test_colbert_matches_flagembedding(oracle_out, ours):
    for ref, got in zip(oracle_out["colbert_vecs"], ours.colbert, strict=True):
        ref = np.asarray(ref, dtype=np.float32)
        assert got.shape == ref.shape and got.shape[1] == 48
        cos = np.sum(ref * got, axis=1) / np.linalg.norm(ref, axis=1) / np.linalg.norm(got, axis=1)
        assert cos.min() >= 0.9999


def test_combined_scores_match_flagembedding_compute_score(flag_oracle, tiny_m3_model):
    weights = [0.4, 0.2, 0.4]
    pairs = [(TEXTS[0], TEXTS[1]), (TEXTS[2], TEXTS[3]), (TEXTS[4], TEXTS[0]), (TEXTS[1], TEXTS[5])]
    for query, passage in pairs:
        # One pair per call: FlagEmbedding pads a batch, and padded tokens would enter its colbert max.
        ref = flag_oracle.compute_score([[query, passage]], max_passage_length=512, weights_for_different_modes=weights)
        out = tiny_m3_model.embed([query, passage], dense=True, sparse=True, colbert=True)
        scores = {
            "dense": dense_score(out.dense[0], out.dense[1]),
            "sparse": lexical_score(out.sparse[0], out.sparse[1]),
            "colbert": colbert_score(out.colbert[0], out.colbert[1]),
        }
        for mode in ("dense", "sparse", "colbert"):
            assert scores[mode] == pytest.approx(ref[mode][0], abs=1e-3), mode
        w = dict(zip(["dense", "sparse", "colbert"], weights, strict=True))
        assert combined_score(scores, w) == pytest.approx(ref["colbert+sparse+dense"][0], abs=1e-3)
        two = combined_score(scores, {"dense": w["dense"], "sparse": w["sparse"]})
        assert two == pytest.approx(ref["sparse+dense"][0], abs=1e-3)
        # The lexical score equals FlagEmbedding's own lexical matching on its own weights.
        lw = flag_oracle.encode([query, passage], return_dense=False, return_sparse=True)["lexical_weights"]
        assert scores["sparse"] == pytest.approx(
            flag_oracle.compute_lexical_matching_score(lw[0], lw[1]), abs=1e-3
        )


def test_static_int8_graph_still_has_three_outputs_and_runs(tiny_m3_int8):
    from ovembed import load_model

    model = load_model(tiny_m3_int8)
    assert model.manifest.precision == "int8"
    out = model.embed(TEXTS, dense=True, sparse=True, colbert=True)
    assert out.dense.shape == (len(TEXTS), 64)
    assert np.isfinite(out.dense).all()
    assert len(out.sparse) == len(out.colbert) == len(TEXTS)
