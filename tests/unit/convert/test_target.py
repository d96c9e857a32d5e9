"""`ovembed quantize --dry-run / --if-changed`: the folder is named from the model's id, and a folder made from
another source, precision or an older copy of the source is made again, never reused."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from cli_runner import run_cli
from conftest import MINILM_ID
from ovembed.manifest import MANIFEST_NAME, Manifest

NOT_A_MODEL = "is neither a local folder nor a hub id like BAAI/bge-m3"


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder: the default output is models/… under the working directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _dry_run(*args) -> tuple[str, str]:
    result = run_cli("quantize", *args, "--dry-run")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip(), result.stderr


@pytest.mark.parametrize(
    "args, folder",
    [
        (["{minilm}", "--model-id", MINILM_ID], "models/all-minilm-l6-v2-int8"),
        (["{minilm}", "--model-id", MINILM_ID, "--precision", "fp16"], "models/all-minilm-l6-v2-fp16"),
        (["{minilm}"], "models/model-int8"),  # a folder with no id given is named after itself
        (["BAAI/bge-m3"], "models/bge-m3-int8"),
        (["BAAI/bge-m3-base"], "models/bge-m3-int8"),  # the alias, as the conversion resolves it
        (["{minilm}", "--output", "elsewhere/m"], "elsewhere/m"),
    ],
)
def test_dry_run_prints_the_folder_quantize_names_and_converts_nothing(args, folder, in_tmp, minilm_source):
    printed, stderr = _dry_run(*[a.format(minilm=minilm_source) for a in args])
    assert printed == folder
    assert f"would quantize: no model at {folder}" in stderr
    assert list(in_tmp.iterdir()) == []


def test_dry_run_json_says_what_it_would_make(in_tmp, minilm_source):
    result = run_cli("quantize", minilm_source, "--model-id", MINILM_ID, "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "output": "models/all-minilm-l6-v2-int8", "source": MINILM_ID, "origin": str(minilm_source.resolve()),
        "precision": "int8", "up_to_date": False, "reason": "no model at models/all-minilm-l6-v2-int8"}


@pytest.mark.parametrize("model", ["./bge-m3", "/no/such/folder", "~/no-such-model", "bge-m4"])
@pytest.mark.parametrize("flag", [[], ["--dry-run"], ["--if-changed"]])
def test_a_model_that_is_neither_a_folder_nor_a_hub_id_exits_2_with_quantizes_message(model, flag, in_tmp):
    result = run_cli("quantize", model, *flag)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"ovembed quantize: error: '{model}' {NOT_A_MODEL}"
    assert list(in_tmp.iterdir()) == []


@pytest.fixture
def made(tiny_m3_fp32, in_tmp) -> Path:
    """The session's fp32 quantization of `tiny_m3_source`, where `ovembed quantize` would have written it here."""
    folder = in_tmp / "models" / "tiny-bge-m3-fp32"
    shutil.copytree(tiny_m3_fp32, folder)
    return folder


def test_if_changed_reuses_a_folder_made_from_the_same_source(made, tiny_m3_source):
    manifest = Manifest.read(made)
    assert (manifest.source, manifest.source_folder) == (str(tiny_m3_source.resolve()),) * 2
    written = (made / MANIFEST_NAME).stat().st_mtime_ns
    result = run_cli("quantize", tiny_m3_source, "--precision", "fp32", "--if-changed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (f"models/tiny-bge-m3-fp32 is up to date ({tiny_m3_source.resolve()}, fp32): "
                                     "nothing to do")
    assert (made / MANIFEST_NAME).stat().st_mtime_ns == written
    assert _dry_run(tiny_m3_source, "--precision", "fp32") == ("models/tiny-bge-m3-fp32", "")
    as_json = run_cli("quantize", tiny_m3_source, "--precision", "fp32", "--if-changed", "--json")
    assert json.loads(as_json.stdout)["quantized"] is False


def test_dry_run_says_why_a_folder_from_another_source_precision_or_length_is_made_again(made, tiny_m3_source):
    source = str(tiny_m3_source.resolve())
    # An id given for the same folder: what the manifest records (and the server calls the model) changes.
    _, why = _dry_run(tiny_m3_source, "--model-id", "BAAI/bge-m3", "--precision", "fp32", "--output", str(made))
    assert why.strip() == f"would quantize: {made} was made from {source}, not BAAI/bge-m3 from {source}"
    # The hub's model is not this folder, whatever its name; --dry-run downloads nothing to say so.
    _, why = _dry_run("BAAI/bge-m3", "--precision", "fp32", "--output", str(made))
    assert f"was made from {source}, not BAAI/bge-m3" in why
    _, why = _dry_run(tiny_m3_source, "--precision", "fp16", "--output", str(made))
    assert why.strip() == f"would quantize: {made} is fp32, not fp16"
    _, why = _dry_run(tiny_m3_source, "--precision", "fp32", "--max-length", "64")
    assert why.strip() == f"would quantize: models/tiny-bge-m3-fp32 has max length {Manifest.read(made).max_length}, not 64"


def test_dry_run_makes_again_a_folder_whose_manifest_is_unreadable(made, tiny_m3_source):
    (made / MANIFEST_NAME).write_text("{not json")
    _, why = _dry_run(tiny_m3_source, "--precision", "fp32")
    assert "is not a valid manifest" in why


@pytest.mark.slow  # two conversions: ~40 s on 2 shared cores
def test_if_changed_makes_the_model_again_from_another_copy_and_after_the_source_changes(tiny_m3_source, in_tmp):
    first, second = in_tmp / "src" / "m3", in_tmp / "src-2" / "m3"  # one model in two places: two MODELs
    for copy in (first, second):
        shutil.copytree(tiny_m3_source, copy)
        old = time.time() - 3600  # as a download: its files are older than what is made from them
        for path in copy.rglob("*"):
            os.utime(path, (old, old))
    args = ["--model-id", "BAAI/bge-m3", "--precision", "fp32", "--if-changed"]
    made = run_cli("quantize", first, *args)
    assert made.returncode == 0 and made.stdout.startswith("wrote models/bge-m3-fp32 "), made.stderr
    folder = in_tmp / "models" / "bge-m3-fp32"
    assert Manifest.read(folder).source_folder == str(first.resolve())

    remade = run_cli("quantize", second, *args)
    assert remade.returncode == 0, remade.stderr
    assert (f"quantizing: models/bge-m3-fp32 was made from BAAI/bge-m3 from {first.resolve()}, "
            f"not BAAI/bge-m3 from {second.resolve()}") in remade.stderr
    manifest = Manifest.read(folder)
    assert (manifest.source, manifest.source_folder) == ("BAAI/bge-m3", str(second.resolve()))
    assert "up to date" in run_cli("quantize", second, *args).stdout

    (second / "config.json").touch()  # a new download over the old one
    _, why = _dry_run(second, *args[:-1])
    assert why.strip() == f"would quantize: {second.resolve()} changed after models/bge-m3-fp32 was made"


def test_dry_run_makes_again_a_folder_made_with_an_older_recipe(made, tiny_m3_source):
    import json

    data = json.loads((made / MANIFEST_NAME).read_text())
    data.pop("recipe", None)  # as every folder made before the recipe was recorded
    (made / MANIFEST_NAME).write_text(json.dumps(data))
    # fp32 has not changed since: kept
    assert _dry_run(tiny_m3_source, "--precision", "fp32") == ("models/tiny-bge-m3-fp32", "")
    # static int8 has (attention is float now): made again
    (made / MANIFEST_NAME).write_text(json.dumps({**data, "precision": "int8"}))
    _, why = _dry_run(tiny_m3_source, "--precision", "int8", "--output", str(made))
    assert why.strip() == (f"would quantize: {made} was made with an older int8 recipe "
                           "(nncf static int8, mixed preset, attention int8)")
