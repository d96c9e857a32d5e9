"""Function-preserving outlier channels (synthetic.BENCH_OUTLIERS): plain static INT8 fails them, `quantize
--precision int8` adapts until it passes with most MatMuls INT8, and the adapted model keeps the model's quality
(MiniLM: STS-B) and BGE-M3's three outputs (tiny layout: against FlagEmbedding).

Unlike the issue's LayerNorm fixture (test_adapt.py), these outliers leave the fp32 model as good as it was
(MiniLM STS-B en 0.820 -> 0.827), so a quality comparison with fp32 means something."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import int8_dot_products_saturate
from ovembed.convert.synthetic import BENCH_OUTLIERS, inject_outliers

TEXTS = ["What is BGE-M3?", "BGE-M3 is a multilingual embedding model with dense, sparse and multi-vector outputs.",
         "Der schnelle braune Fuchs springt über den faulen Hund.", "机器学习是人工智能的一个分支。",
         "كيف يمكنني إعادة تعيين كلمة المرور؟", "a reasonably long sentence about quantization, outliers and speed"]
# The adapted tiny model against FlagEmbedding, per text. Measured: dense >= 0.99999, ColBERT tokens >= 0.973,
# sparse 0.84-0.9996 (mean 0.968; the weakest: "What is BGE-M3?", 3 weights of at most 0.19). Plain static INT8 on
# the same fixture: dense 0.92, sparse mean 0.73, ColBERT mean 0.89; on the unmodified model sparse >= 0.997. The
# gate and the validation metric are dense-only, so sparse is the output adaptation protects least.
COLBERT_MIN = 0.95
SPARSE_MEAN = 0.95
SPARSE_MIN = 0.8
SPARSE_TIE = 0.05


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_projection_outliers_are_large_at_the_projection_inputs_and_attention_is_unchanged(minilm_source, tmp_path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    picked = inject_outliers(minilm_source, tmp_path / "out", **BENCH_OUTLIERS)
    batch = AutoTokenizer.from_pretrained(minilm_source)(TEXTS, padding=True, return_tensors="pt")

    def run(folder) -> dict:
        model, seen = AutoModel.from_pretrained(folder).eval(), {}
        layer = model.encoder.layer[0]
        for name, module in (("context", layer.attention.output.dense), ("inner", layer.output.dense)):
            module.register_forward_pre_hook(lambda _, args, name=name: seen.__setitem__(name, args[0].abs()))
        layer.attention.output.dense.register_forward_hook(lambda _, __, out: seen.__setitem__("attention", out))
        with torch.no_grad():
            model(**batch)
        return seen

    before, after = run(minilm_source), run(tmp_path / "out")
    # The picked context channels: tens of times every other channel, in the copy only.
    peak = after["context"].amax(dim=(0, 1))
    others = [c for c in range(384) if c not in picked]
    assert peak[picked].min() > 10 * peak[others].max()
    assert before["context"].amax(dim=(0, 1))[picked].max() < 3 * before["context"].amax(dim=(0, 1))[others].max()
    # The FFN's inner activations get their own outlier channels.
    inner = after["inner"].amax(dim=(0, 1))
    assert int((inner > 10 * inner.median()).sum()) >= BENCH_OUTLIERS["channels"]
    # The attention output projection divides the outliers back out: the attention block computes what it did.
    assert torch.allclose(after["attention"], before["attention"], atol=1e-4)


@pytest.mark.slow
def test_minilm_with_outliers_adapts_keeping_stsb_within_001_of_fp32(minilm_source, shared_data, tmp_path):
    from sentence_transformers import SentenceTransformer

    from ovembed import load_model
    from ovembed.convert.pipeline import run_quantize
    from ovembed.quality.datasets import load_sts
    from ovembed.quality.metrics import spearman

    inject_outliers(minilm_source, tmp_path / "src", **BENCH_OUTLIERS)
    manifest, folder, failures = run_quantize(str(tmp_path / "src"), output=tmp_path / "int8", precision="int8")
    q = manifest.quantization
    # The fixture is hard: plain static INT8 (the first step tried) misses the gate; the adapted model passes.
    assert q["tried"][0]["step"] == "static int8" and q["tried"][0]["passed"] is False, q["tried"]
    assert failures == [] and q["tried"][-1]["passed"] is True, q["tried"]
    assert q["int8_layers"] >= 0.8 * q["linear_layers"], q
    # Without VNNI (INT8 dot products saturate) SmoothQuant alone missed the gate and 2 of 36 MatMuls were left
    # float; with AVX-512 VNNI SmoothQuant alone passes. Either way only encoder MatMuls are left float, and what
    # the ranking puts first is an FFN down projection, not the (larger) attention-context outliers.
    assert q["tried"][-1]["step"].startswith("smoothquant"), q["tried"]
    if int8_dot_products_saturate():
        assert q["float_layers"], q
    assert all(name.startswith("backbone.encoder.layer.") for name in q["float_layers"]), q["float_layers"]
    if q["float_layers"]:
        hardest = max(q["outlier_ratios"], key=q["outlier_ratios"].get)
        assert hardest.endswith(".output.dense") and "attention" not in hardest, q["outlier_ratios"]

    left, right, gold = load_sts(shared_data / "stsb_multi_mt" / "en")
    fp32 = SentenceTransformer(str(tmp_path / "src"), device="cpu")
    rho_fp32 = spearman(_cosines(fp32.encode(left), fp32.encode(right)), gold)
    model = load_model(folder)
    rho_int8 = spearman(_cosines(model.embed(left).dense, model.embed(right).dense), gold)
    assert rho_fp32 > 0.8  # the outliers did not spoil the model itself
    assert abs(rho_int8 - rho_fp32) <= 0.01, (rho_int8, rho_fp32)


@pytest.mark.slow
def test_tiny_bge_m3_with_outliers_adapts_and_its_three_outputs_match_flagembedding(tiny_m3_source, tmp_path):
    from FlagEmbedding import BGEM3FlagModel

    from ovembed import load_model
    from ovembed.convert.pipeline import run_quantize

    source = tmp_path / "src"
    inject_outliers(tiny_m3_source, source, **BENCH_OUTLIERS)
    manifest, folder, failures = run_quantize(str(source), output=tmp_path / "int8", precision="int8")
    q = manifest.quantization
    # Plain static INT8 misses the gate where INT8 dot products saturate (no VNNI: dense cosine 0.92 on AVX2) and
    # passes where they do not (0.9999 with AVX-512 VNNI); either way the model quantize keeps must match
    # FlagEmbedding on all three outputs.
    assert q["tried"][0]["step"] == "static int8" and q["tried"][0]["passed"] is not int8_dot_products_saturate()
    assert failures == [] and q["tried"][-1]["passed"] is True, q["tried"]
    assert q["int8_layers"] >= 0.8 * q["linear_layers"], q

    import torch

    colbert_dim = torch.load(source / "colbert_linear.pt", weights_only=True)["weight"].shape[0]
    oracle = BGEM3FlagModel(str(source), use_fp16=False, devices="cpu", colbert_dim=colbert_dim)
    ref = oracle.encode(TEXTS, batch_size=1, return_dense=True, return_sparse=True, return_colbert_vecs=True)
    ours = load_model(folder).embed(TEXTS, dense=True, sparse=True, colbert=True)
    assert _cosines(np.asarray(ref["dense_vecs"]), ours.dense).min() >= 0.97
    sparse = []
    for ref_weights, got, ref_colbert, colbert in zip(ref["lexical_weights"], ours.sparse, ref["colbert_vecs"],
                                                      ours.colbert, strict=True):
        expected = {int(k): float(v) for k, v in ref_weights.items()}
        actual = dict(zip(got["indices"], got["values"], strict=True))
        keys = sorted(expected.keys() | actual.keys())
        a, b = np.array([expected.get(k, 0.0) for k in keys]), np.array([actual.get(k, 0.0) for k in keys])
        sparse.append(_cosines(a[None], b[None])[0])
        # Our heaviest token is FlagEmbedding's, up to near-ties (the tokenizer and the weights are random: two
        # tokens 0.004 apart swapped places in one run of five).
        assert expected.get(max(actual, key=actual.get), 0.0) >= max(expected.values()) - SPARSE_TIE, (expected, actual)
        assert colbert.shape == ref_colbert.shape
        assert _cosines(ref_colbert, colbert).min() >= COLBERT_MIN
    assert min(sparse) >= SPARSE_MIN and np.mean(sparse) >= SPARSE_MEAN, sparse
