"""`--precision int8` that adapts to outlier channels (convert/adapt.py) and the outlier fixture it is tested on."""

from __future__ import annotations

import pytest

from conftest import int8_dot_products_saturate
from ovembed.cli import main as cli_main
from ovembed.convert.adapt import gate_metric
from ovembed.manifest import Manifest

# Seed 1 puts the outliers on MiniLM channels 180, 196 and 289. There plain static INT8 misses the gate narrowly,
# as the issue measured (dense cosine min 0.9677 < 0.97); where the channels fall matters: seed 0 gives 0.86,
# seed 3 passes (0.98).
OUTLIER_SEED = 1


def test_gate_metric_reaches_the_gate_exactly_when_both_conditions_hold():
    assert gate_metric([1.0, 1.0], 0.99, 0.97) == 1.0
    assert gate_metric([0.995, 0.97], 0.99, 0.97) < 0.99  # mean 0.9825 < 0.99
    assert gate_metric([0.99] * 9 + [0.97], 0.99, 0.97) < 0.99  # mean 0.988
    assert gate_metric([1.0] * 99 + [0.97], 0.99, 0.97) == pytest.approx(0.99)  # min exactly at the gate
    assert gate_metric([1.0] * 99 + [0.969], 0.99, 0.97) < 0.99
    assert gate_metric([0.999, 0.98], 1.01, 1.0) == pytest.approx(0.98)  # thresholds at or over 1: no division


def test_inject_outliers_scales_the_same_channels_of_every_post_ffn_layernorm(minilm_source, tmp_path):
    import torch
    from transformers import AutoModel

    from ovembed.convert.synthetic import inject_outliers

    channels = inject_outliers(minilm_source, tmp_path / "out", channels=3, scale=80, shift=20, seed=OUTLIER_SEED)
    assert channels == [180, 196, 289]
    before, after = AutoModel.from_pretrained(minilm_source), AutoModel.from_pretrained(tmp_path / "out")
    others = [c for c in range(before.config.hidden_size) if c not in channels]
    for a, b in zip(before.encoder.layer, after.encoder.layer):
        wa, wb = a.output.LayerNorm.weight.detach(), b.output.LayerNorm.weight.detach()
        ba, bb = a.output.LayerNorm.bias.detach(), b.output.LayerNorm.bias.detach()
        assert torch.allclose(wb[channels], wa[channels] * 80) and torch.allclose(bb[channels], ba[channels] + 20)
        assert torch.equal(wb[others], wa[others]) and torch.equal(bb[others], ba[others])
        assert torch.equal(a.attention.output.LayerNorm.weight, b.attention.output.LayerNorm.weight)
    assert (tmp_path / "out" / "modules.json").is_file() and (tmp_path / "out" / "1_Pooling").is_dir()


def test_an_unmodified_model_stops_at_plain_static_int8_all_layers_int8(minilm_int8):
    q = Manifest.read(minilm_int8).quantization
    assert q["step"] == "static int8" and q["linear_layers"] == 36
    assert q["int8_layers"] == 36 and q["float_layers"] == []
    assert [t["step"] for t in q["tried"]] == ["static int8"] and q["tried"][0]["passed"] is True


@pytest.mark.slow
def test_a_model_no_int8_step_can_save_fails_naming_every_step_tried_and_what_next(tiny_m3_source, tmp_path, capsys):
    out = tmp_path / "strict"
    # A gate no model meets (an exact copy scores 1.0), so every step runs and fails.
    args = ["quantize", str(tiny_m3_source), "--precision", "int8", "--output", str(out),
            "--min-cosine-mean", "1.01"]
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and not out.exists() and list(tmp_path.iterdir()) == []
    message = err[err.index("failed the accuracy gate"):]
    for step in ("static int8", "smoothquant (alpha", "smoothquant, outlier layers float (alpha", "accuracy control (",
                 "int8 weights"):
        assert step in message, message
    assert "Next: --precision fp16" in message and "--precision int8-weights" not in message

    # --no-gate keeps the plain recipe's model, without adapting.
    assert cli_main([*args, "--no-gate"]) == 0
    q = Manifest.read(out).quantization
    assert q["step"] == "static int8" and len(q["tried"]) == 1 and q["tried"][0]["passed"] is False


def test_int8_weights_failure_points_to_int8_which_adapts(tiny_m3_source, tmp_path, capsys):
    args = ["quantize", str(tiny_m3_source), "--precision", "int8-weights", "--output", str(tmp_path / "w"),
            "--min-cosine-mean", "1.01"]
    assert cli_main(args) == 1
    message = capsys.readouterr().err
    assert "tried 1 way (int8-weights" in message and "Next: --precision int8, which adapts" in message


@pytest.mark.slow
def test_the_manifest_names_each_linear_layer_as_pytorch_does_and_says_how_it_computes(tiny_m3_source):
    """MatMuls left float (here: all but a few, by op type) are named by their PyTorch module in the manifest."""
    import torch

    from ovembed.convert import export
    from ovembed.convert import quantize as recipes
    from ovembed.convert.adapt import Candidate, describe, linear_call_order
    from ovembed.engine.tokenize import TextTokenizer

    source = export.inspect_source(tiny_m3_source, "tiny", None, 64)
    encoder = export.load_encoder(source)
    fp32 = export.export_openvino(encoder, 64)
    tables = recipes.quantize_table(export.token_table(encoder), "int8")
    ids = TextTokenizer(tiny_m3_source, 64).encode(["a short text", "another one, a little longer than that"])
    # The pooler runs in forward() but its output is unused, so the graph has no MatMul for it.
    modules = {n for n, m in encoder.named_modules() if isinstance(m, torch.nn.Linear) and "pooler" not in n}
    assert len(modules) == 2 * 6 + 2  # 2 layers x (q k v o ffn1 ffn2) + the sparse and colbert heads

    names = linear_call_order(encoder)
    plain = describe(Candidate("static int8", recipes.compress(fp32.clone(), "int8", tables, ids), tables), names)
    assert plain["linear_layers"] == 14 and plain["int8_layers"] == 14 and plain["float_layers"] == []
    ffn_float = recipes.compress(fp32.clone(), "int8", tables, ids, float_types=["MatMul"])
    record = describe(Candidate("accuracy control", ffn_float, tables), names)
    assert record["int8_layers"] == 0 and set(record["float_layers"]) == modules
    weights_only = recipes.compress(fp32.clone(), "int8-weights", tables, [])
    weights = describe(Candidate("int8 weights", weights_only, tables), names)
    assert weights["int8_weight_only_layers"] == 14 and weights["float_layers"] == []


@pytest.mark.slow
def test_minilm_with_outliers_fails_plain_int8_and_quantize_adapts_until_it_passes(minilm_source, tmp_path):
    """The issue's fixture (x 80 / + 20 on three channels): plain static INT8 misses the gate, the adapted model
    passes it, most linear layers still INT8, and the engine loads the folder as it is."""
    from ovembed import load_model
    from ovembed.convert.pipeline import run_quantize
    from ovembed.convert.synthetic import inject_outliers

    inject_outliers(minilm_source, tmp_path / "src", channels=3, scale=80, shift=20, seed=OUTLIER_SEED)
    manifest, folder, failures = run_quantize(str(tmp_path / "src"), output=tmp_path / "int8", precision="int8",
                                              model_id="sentence-transformers/all-MiniLM-L6-v2")
    q = manifest.quantization
    assert failures == [] and manifest.verification["gate"]["passed"] is True
    # Plain static INT8 misses the gate where INT8 dot products saturate (no VNNI), and passes where they do not.
    assert q["tried"][0]["step"] == "static int8" and q["tried"][0]["passed"] is not int8_dot_products_saturate()
    assert (q["step"] != "static int8") is int8_dot_products_saturate() and q["tried"][-1]["passed"] is True
    assert q["int8_layers"] >= 0.8 * q["linear_layers"], q
    # Float layers, if any, are named by their PyTorch module, not by the graph's op names.
    assert all(name.startswith("backbone.encoder.layer.") for name in q["float_layers"]), q["float_layers"]
    model = load_model(folder)
    assert model.manifest.precision == "int8" and model.embed(["an outlier check"]).dense.shape == (1, 384)
