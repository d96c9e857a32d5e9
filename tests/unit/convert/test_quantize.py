"""`ovembed quantize`: manifests, the accuracy gate, MiniLM quality after INT8, hub failures."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from cli_runner import run_cli
from ovembed import load_model
from ovembed.cli import main as cli_main
from ovembed.convert.synthetic import builtin_texts
from ovembed.manifest import Manifest, sha256_file


@pytest.fixture(scope="module")
def st_minilm(minilm_source):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_source), device="cpu")


# The weight-only recipe (the seed's) in the full run only: its conversion alone takes ~10 s.
RECIPES = ["minilm_int8", pytest.param("minilm_int8_weights", marks=pytest.mark.slow)]


@pytest.mark.parametrize("folder_fixture", RECIPES)
def test_minilm_manifest_records_source_pooling_and_gate(folder_fixture, request):
    folder = request.getfixturevalue(folder_fixture)
    m = Manifest.read(folder)
    assert m.source == "sentence-transformers/all-MiniLM-L6-v2"  # --model-id for a local folder
    assert m.layout == "sentence-transformer" and m.pooling == "mean" and m.normalize is True
    assert m.dimension == 384 and m.max_length == 256 and m.outputs == ["dense"]
    assert m.precision == folder.name.removeprefix("minilm-")
    gate = m.verification["gate"]
    assert gate["passed"] is True and gate["dense_cosine_mean_min"] == 0.99 and gate["dense_cosine_min_min"] == 0.97
    assert m.verification["dense_cosine_mean"] >= 0.99 and m.verification["dense_cosine_min"] >= 0.97
    assert m.verification["texts"] == len(builtin_texts("verification.txt"))
    assert {"openvino", "nncf", "torch", "transformers"} <= set(m.tool_versions)
    for name in ("openvino_model.xml", "openvino_model.bin", "tokenizer.json", "token_embeddings.npy"):
        assert m.files[name] == sha256_file(folder / name)
    assert not [p for p in folder.parent.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("folder_fixture", RECIPES)
def test_minilm_int8_close_to_sentence_transformers_fp32(folder_fixture, request, st_minilm):
    model = load_model(request.getfixturevalue(folder_fixture))
    texts = builtin_texts("verification.txt") + builtin_texts("calibration.txt")[:100]
    ref = st_minilm.encode(texts, normalize_embeddings=True)
    ours = model.embed(texts).dense
    cos = np.sum(ref * ours, axis=1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())


@pytest.mark.parametrize("folder_fixture", RECIPES)
def test_minilm_int8_stsb_en_spearman(folder_fixture, request, shared_data):
    with open(shared_data / "stsb_multi_mt" / "en" / "pairs.tsv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert len(rows) == 1379
    model = load_model(request.getfixturevalue(folder_fixture))
    a = model.embed([r["sentence1"] for r in rows]).dense
    b = model.embed([r["sentence2"] for r in rows]).dense
    rho = spearmanr(np.sum(a * b, axis=1), [float(r["score"]) for r in rows]).statistic
    assert rho >= 0.81, rho  # published fp32: 0.820


@pytest.mark.slow
def test_gate_refuses_a_scrambled_model_with_exit_1(tiny_m3_source, tmp_path, monkeypatch, capsys):
    from ovembed.convert import quantize as recipes

    real_save = recipes.save

    def save_scrambled(ov_model, tables, folder, precision):
        # Fault injection: the exported model's vocabulary rows get shuffled after export.
        rows = tables["token_embeddings.npy"]
        tables = {**tables, "token_embeddings.npy": rows[np.random.default_rng(0).permutation(len(rows))]}
        real_save(ov_model, tables, folder, precision)

    monkeypatch.setattr(recipes, "save", save_scrambled)
    out = tmp_path / "broken"
    code = cli_main(["quantize", str(tiny_m3_source), "--precision", "fp32", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert "failed the accuracy gate" in err and "dense cosine" in err and "Traceback" not in err
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging folder left behind


@pytest.mark.slow
def test_no_gate_keeps_a_failing_model_and_records_the_failure(tiny_m3_source, tmp_path, capsys):
    out = tmp_path / "kept"
    # An fp32 export agrees to ~1.0; a threshold above 1 makes it fail honestly.
    args = ["quantize", str(tiny_m3_source), "--precision", "fp32", "--output", str(out), "--min-cosine-mean", "1.01"]
    assert cli_main(args) == 1 and not out.exists()
    assert cli_main([*args, "--no-gate"]) == 0
    gate = Manifest.read(out).verification["gate"]
    assert gate["passed"] is False and gate["dense_cosine_mean_min"] == 1.01
    assert "FAILED" in capsys.readouterr().out


@pytest.mark.slow
def test_quantize_replaces_an_existing_model_folder(tiny_m3_source, tmp_path):
    out = tmp_path / "m"
    assert cli_main(["quantize", str(tiny_m3_source), "--precision", "fp16", "--output", str(out)]) == 0
    first = Manifest.read(out)
    assert first.precision == "fp16" and first.token_table_dtype == "float16"
    assert cli_main(["quantize", str(tiny_m3_source), "--precision", "fp32", "--output", str(out)]) == 0
    assert Manifest.read(out).precision == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert load_model(out).embed(["ok"]).dense.shape == (1, 64)


def _run_cli(*args, env=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "ovembed.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def test_unreachable_hub_fails_fast_naming_the_model_and_the_fix(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    # A closed loopback port: the "hub" refuses at once, no traffic leaves the machine.
    env.update(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    started = time.monotonic()
    proc = _run_cli("quantize", "BAAI/bge-m3-base", "--output", str(tmp_path / "out"), env=env)
    assert time.monotonic() - started < 60
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "'BAAI/bge-m3-base' does not exist; using 'BAAI/bge-m3'" in proc.stderr
    assert "could not download 'BAAI/bge-m3'" in proc.stderr and "ovembed quantize ./bge-m3" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_offline_mode_names_the_model_too(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = _run_cli("quantize", "sentence-transformers/all-MiniLM-L6-v2", env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "'sentence-transformers/all-MiniLM-L6-v2' is not cached" in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["./no/such/folder"], "neither a local folder nor a hub id"),
        (["{src}", "--max-length", "100000"], "--max-length must be between"),
        (["{empty}"], "has no config.json"),
        (["{src}", "--calibration", "{empty}/nope.txt"], "cannot read calibration file"),
    ],
)
def test_bad_quantize_input_exits_2_with_a_message(args, message, tiny_m3_source, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [a.format(src=tiny_m3_source, empty=tmp_path / "empty") for a in args]
    proc = run_cli("quantize", *args, "--precision", "int8", "--output", str(tmp_path / "o"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_quantize_json_output(tiny_m3_source, tmp_path):
    proc = _run_cli("quantize", str(tiny_m3_source), "--precision", "fp32", "--output", str(tmp_path / "j"), "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["manifest"]["outputs"] == ["dense", "sparse", "colbert"]
    assert data["manifest"]["colbert_dimension"] == 48
    assert Path(data["output"]) == tmp_path / "j"
