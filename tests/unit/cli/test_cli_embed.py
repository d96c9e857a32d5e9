"""`ovembed embed`: JSON lines in input order, outputs on request, clear errors."""

from __future__ import annotations

import json

import numpy as np

from cli_runner import run_cli

TEXTS = ["first text", "zweiter Text", "第三个", ""]


def run(*args, stdin=None):
    return run_cli("embed", *args, input=stdin)


def test_embed_prints_one_json_line_per_text_in_order(tiny_m3_fp32, tiny_m3_model):
    proc = run("--model", str(tiny_m3_fp32), "--dense", "--sparse", "--colbert", *TEXTS)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(TEXTS)
    expected = tiny_m3_model.embed(TEXTS, sparse=True, colbert=True)
    for i, row in enumerate(rows):
        assert set(row) == {"dense", "sparse", "colbert"}
        np.testing.assert_allclose(row["dense"], expected.dense[i], atol=1e-6)
        assert row["sparse"]["indices"] == expected.sparse[i]["indices"]
        assert np.asarray(row["colbert"]).shape == expected.colbert[i].shape


def test_embed_reads_stdin_and_defaults_to_dense(tiny_m3_fp32):
    proc = run("--model", str(tiny_m3_fp32), "-", stdin="one\ntwo\nthree\n")
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [set(r) for r in rows] == [{"dense"}] * 3
    assert abs(np.linalg.norm(rows[0]["dense"]) - 1) < 1e-5


def test_embed_no_normalize(tiny_m3_fp32):
    rows = [json.loads(x) for x in run("--model", str(tiny_m3_fp32), "--no-normalize", "hello").stdout.splitlines()]
    assert abs(np.linalg.norm(rows[0]["dense"]) - 1) > 1e-3


def test_embed_errors_are_messages_with_exit_2(tiny_m3_fp32, minilm_int8, tmp_path):
    cases = [
        (["--model", str(tmp_path / "missing"), "x"], "model folder not found"),
        (["--model", str(tiny_m3_fp32)], "no texts"),
        (["--model", str(minilm_int8), "--sparse", "x"], "has no sparse output"),
        (["--model", str(tiny_m3_fp32), "--no-truncate", "word " * 3000], "more than the model's max length"),
    ]
    for args, message in cases:
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr
