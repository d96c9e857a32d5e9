"""The engine's contract on edge inputs, batching and errors (real OpenVINO models)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ovembed import ErrorKind, OvembedError, TokenBudget, load_model
from ovembed.engine.batcher import plan_batches
from ovembed.engine.outputs import lexical_weights
from ovembed.engine.scoring import combined_score, lexical_score

EDGE_TEXTS = ["", " ", "\t\n ", "😀🚀🎉", "東京は日本の首都です。", "שלום עולם", "مرحبا بالعالم", "x"]


def test_empty_list_gives_empty_outputs(tiny_m3_model):
    out = tiny_m3_model.embed([], dense=True, sparse=True, colbert=True)
    assert out.dense.shape == (0, tiny_m3_model.dimension)
    assert out.sparse == [] and out.colbert == [] and out.token_counts == []


@pytest.mark.parametrize("model_fixture", ["tiny_m3_model", "minilm_int8"])
def test_edge_texts_give_finite_unit_vectors(model_fixture, request):
    model = request.getfixturevalue(model_fixture)
    model = model if hasattr(model, "embed") else load_model(model)
    out = model.embed(EDGE_TEXTS)
    assert out.dense.shape == (len(EDGE_TEXTS), model.dimension)
    assert np.isfinite(out.dense).all()
    np.testing.assert_allclose(np.linalg.norm(out.dense, axis=1), 1.0, atol=1e-5)
    assert all(n >= 2 for n in out.token_counts)  # [CLS] and [SEP] at least


def test_sparse_and_colbert_shapes_follow_token_counts(tiny_m3_model):
    out = tiny_m3_model.embed(EDGE_TEXTS, dense=False, sparse=True, colbert=True)
    assert out.dense is None
    for vec, n in zip(out.colbert, out.token_counts, strict=True):
        assert vec.shape == (n - 1, tiny_m3_model.manifest.colbert_dimension)
        np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    empty = out.sparse[0]  # "" has only special tokens: nothing left
    assert empty == {"indices": [], "values": []}


def test_long_text_is_truncated_to_max_length(tiny_m3_model, minilm_int8):
    minilm = load_model(minilm_int8)
    for model in (tiny_m3_model, minilm):
        text = "word " * (model.manifest.max_length * 3)
        out = model.embed([text, "short"], colbert=model is tiny_m3_model)
        assert out.token_counts[0] == model.manifest.max_length
        assert np.isfinite(out.dense).all()


def test_too_long_text_without_truncation_is_a_clear_error(tiny_m3_model):
    text = "word " * 2000
    with pytest.raises(OvembedError) as info:
        tiny_m3_model.embed(["fine", text], truncate=False)
    assert info.value.kind is ErrorKind.INPUT_TOO_LONG
    assert "text 1" in str(info.value) and str(tiny_m3_model.manifest.max_length) in str(info.value)


def _mixed_texts(n: int) -> list[str]:
    rng = np.random.default_rng(7)
    words = ["alpha", "Bär", "数据", "модель", "search", "vector", "🙂", "query", "naïve", "lorem"]
    return [" ".join(rng.choice(words, size=int(rng.integers(0, 120)))) for _ in range(n)]


@pytest.mark.slow
def test_thousand_mixed_texts_keep_order_and_match_one_at_a_time(minilm_fp32):
    model = load_model(minilm_fp32)
    texts = _mixed_texts(1000)
    batched = model.embed(texts)
    assert len({len(x) for x in model.tokenize(texts)}) > 50  # really mixed lengths
    assert len(plan_batches([len(x) for x in model.tokenize(texts)], model.budget)) > 3
    singles = np.stack([model.embed([t]).dense[0] for t in texts])
    np.testing.assert_allclose(batched.dense, singles, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("folder_fixture", ["minilm_int8", "minilm_int8_weights"])
def test_int8_batched_results_agree_with_one_at_a_time(folder_fixture, request):
    # Static INT8 is not bit-stable across batch shapes: a different kernel blocking can flip one
    # activation's rounding. Order and padding are exact (fp32 test above); here agreement is cosine.
    model = load_model(request.getfixturevalue(folder_fixture))
    texts = _mixed_texts(300)
    batched = model.embed(texts).dense
    singles = np.stack([model.embed([t]).dense[0] for t in texts])
    cos = np.sum(batched * singles, axis=1)
    assert cos.min() >= 0.98 and cos.mean() >= 0.999


def test_small_token_budget_gives_same_results_as_default(tiny_m3_fp32, tiny_m3_model):
    texts = [("ab " * n).strip() for n in range(0, 300, 7)]
    small = load_model(tiny_m3_fp32, budget=TokenBudget(tokens=256, attention=256 * 64, max_batch=4))
    a = small.embed(texts, sparse=True, colbert=True)
    b = tiny_m3_model.embed(texts, sparse=True, colbert=True)
    np.testing.assert_allclose(a.dense, b.dense, atol=1e-5)
    for x, y in zip(a.colbert, b.colbert, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    for x, y in zip(a.sparse, b.sparse, strict=True):
        assert x["indices"] == y["indices"]
        np.testing.assert_allclose(x["values"], y["values"], atol=1e-5)


def test_outputs_a_model_lacks_are_refused(minilm_int8):
    model = load_model(minilm_int8)
    assert model.outputs == ["dense"]
    with pytest.raises(OvembedError) as info:
        model.embed(["x"], sparse=True)
    assert info.value.kind is ErrorKind.VALIDATION and "sparse" in str(info.value)


def test_asking_for_no_output_is_refused(tiny_m3_model):
    with pytest.raises(OvembedError, match="at least one output"):
        tiny_m3_model.embed(["x"], dense=False)


@pytest.mark.parametrize("bad", ["a plain string", [1, 2], ["ok", None], None])
def test_non_list_of_strings_is_refused(tiny_m3_model, bad):
    with pytest.raises(OvembedError) as info:
        tiny_m3_model.embed(bad)
    assert info.value.kind is ErrorKind.VALIDATION


def test_normalize_false_returns_raw_vectors(tiny_m3_model):
    raw = tiny_m3_model.embed(["hello world"], normalize=False).dense[0]
    unit = tiny_m3_model.embed(["hello world"]).dense[0]
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, atol=1e-5)


def test_modified_model_file_is_refused_at_load(tiny_m3_fp32, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_m3_fp32, copy)
    with open(copy / "openvino_model.bin", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(OvembedError) as info:
        load_model(copy)
    assert info.value.kind is ErrorKind.MODEL_INVALID and "checksum" in str(info.value)


def test_missing_folder_and_missing_manifest_are_clear_errors(tmp_path):
    with pytest.raises(OvembedError) as info:
        load_model(tmp_path / "nope")
    assert info.value.kind is ErrorKind.MODEL_NOT_FOUND
    with pytest.raises(OvembedError) as info:
        load_model(tmp_path)
    assert info.value.kind is ErrorKind.MODEL_INVALID and "ovembed quantize" in str(info.value)


def test_serving_path_imports_no_torch_or_transformers(tiny_m3_fp32):
    code = (
        "import sys, ovembed; m = ovembed.load_model(sys.argv[1]); m.embed(['x'], sparse=True, colbert=True);"
        "import ovembed.server.app, ovembed.rag, ovembed.embedders, ovembed.store, ovembed.reembed, ovembed.client;"
        "import ovembed.manifest, ovembed.engine.scoring;"
        "bad = [n for n in ('torch', 'transformers', 'nncf', 'ray') if n in sys.modules]; print(bad);"
        "sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_m3_fp32)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- batch planning -------------------------------------------------------------------------------


def test_plan_batches_covers_every_index_once_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 600, 500).tolist()
    budget = TokenBudget(tokens=2048, attention=2048 * 128, max_batch=32)
    batches = plan_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(500))
    for batch in batches:
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 32
        if len(batch) > 1:
            assert len(batch) * longest <= budget.tokens
            assert len(batch) * longest**2 <= budget.attention
    assert any(len(b) > 1 for b in batches)


def test_plan_batches_puts_a_very_long_sequence_alone():
    lengths = [8192, 10, 12, 8000, 11]
    batches = plan_batches(lengths, TokenBudget())
    assert [0] in batches and [3] in batches
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]


# --- scoring helpers ------------------------------------------------------------------------------


def test_lexical_weights_keep_max_per_id_and_drop_specials():
    vec = lexical_weights(np.array([0.9, 0.2, 0.5, 0.0, 0.7, 0.3]), [0, 7, 5, 9, 7, 2], special_ids=[0, 1, 2, 3])
    assert vec == {"indices": [5, 7], "values": pytest.approx([0.5, 0.7])}


def test_lexical_score_and_combined_score_by_hand():
    q = {"indices": [1, 5, 9], "values": [0.5, 1.0, 2.0]}
    p = {"indices": [5, 9, 11], "values": [0.25, 0.5, 3.0]}
    assert lexical_score(q, p) == pytest.approx(1.0 * 0.25 + 2.0 * 0.5)
    assert combined_score({"dense": 0.8, "sparse": 0.2, "colbert": 0.6}) == pytest.approx(
        (0.4 * 0.8 + 0.2 * 0.2 + 0.4 * 0.6) / 1.0
    )
    assert combined_score({"dense": 0.8, "sparse": 0.2}, {"dense": 1, "sparse": 1}) == pytest.approx(0.5)


def test_errors_survive_pickling_across_processes():
    import pickle

    error = pickle.loads(pickle.dumps(OvembedError(ErrorKind.INPUT_TOO_LONG, "text 3 is too long")))
    assert error.kind is ErrorKind.INPUT_TOO_LONG and str(error) == "text 3 is too long"
