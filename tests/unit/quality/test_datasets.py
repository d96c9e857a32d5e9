"""`ovembed eval --data` given a folder of datasets instead of one: the error names the datasets inside it."""

from __future__ import annotations

from cli_runner import run_cli


def test_a_collection_folder_names_its_datasets_as_data_suggestions(shared_data):
    xquad = shared_data / "xquad"
    proc = run_cli("eval", "--data", xquad, "--model", "no-model-needed-yet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no pairs.tsv" not in proc.stderr
    assert f"{xquad}: a folder of 12 datasets, not a dataset itself; name the ones to score: --data {xquad}/ar " \
           f"--data {xquad}/de" in proc.stderr
    assert f"--data {xquad}/zh" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_folder_of_collections_names_datasets_two_levels_down(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / "data" / "sts" / name).mkdir(parents=True)
        (tmp_path / "data" / "sts" / name / "pairs.tsv").write_text("sentence1\tsentence2\tscore\nx\ty\t1\n")
    (tmp_path / "data" / "notes").mkdir()
    proc = run_cli("eval", "--data", tmp_path / "data", "--model", "no-model-needed-yet")
    assert proc.returncode == 2
    assert f"a folder of 3 datasets, not a dataset itself; name the ones to score: --data {tmp_path}/data/sts/a " \
           f"--data {tmp_path}/data/sts/b --data {tmp_path}/data/sts/c" in proc.stderr


def test_a_folder_without_any_dataset_says_what_a_dataset_folder_holds(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    proc = run_cli("eval", "--data", tmp_path / "empty", "--model", "no-model-needed-yet")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a dataset folder: a BEIR folder holds corpus.jsonl, queries.jsonl and qrels.tsv, an STS folder " \
           "pairs.tsv" in proc.stderr
