"""pyro-vae compare: two runs' curves in one figure, one table, and what differs between them."""

from __future__ import annotations

import json

from pyro_vae.cli import main as cli_main

FAST = ["--dataset", "moons", "--hidden", "8", "--max-train", "64", "--max-test", "16",
        "--epochs", "2", "--batch-size", "32", "--no-progress", "--no-figures"]


def test_compare_two_runs_that_differ_in_their_learning_rate(tmp_path, capsys):
    a, b = tmp_path / "lr-1e-3", tmp_path / "lr-1e-2"
    assert cli_main(["train", *FAST, "--lr", "1e-3", "--out", str(a)]) == 0
    assert cli_main(["train", *FAST, "--lr", "1e-2", "--epochs", "3", "--out", str(b)]) == 0
    assert cli_main(["evaluate", str(b), "--iw-samples", "10"]) == 0
    capsys.readouterr()
    assert cli_main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| run | lr | epochs | test ELBO")
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["run"] for r in rows] == ["lr-1e-3", "lr-1e-2"]
    assert [r["lr"] for r in rows] == ["0.001", "0.01"] and "epochs" in rows[0]
    assert rows[0]["test log p(x)"] == "–" and "(iwae)" in rows[1]["test log p(x)"]
    assert rows[1]["epochs"] == "3" and "±" in rows[0]["test ELBO"]
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 10_000


def test_compare_refuses_a_folder_that_is_not_a_run_in_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli_main(["compare", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a finished run folder" in err
