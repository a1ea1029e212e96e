"""Long jobs (:mod:`pyro_vae.jobs`): progress with an ETA, and a refusal within seconds of
work projected past the budget — on a fake clock for the mechanism, and through the command
line on the cases that used to run for hours without a word."""

from __future__ import annotations

import io
import json
import time

import pytest

from pyro_vae import ConfigError, jobs
from pyro_vae.cli import main as cli_main
from pyro_vae.jobs import BudgetError, budget, job, report


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    """``time.monotonic`` under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(jobs.time, "monotonic", c)
    return c


def run_units(clock, total, seconds_per_unit, units, **kw):
    """Open a job of ``total`` units and do ``units`` of them at the given rate."""
    with job("the job", total, "unit", "lower --units", **kw) as work:
        for _ in range(units):
            clock.now += seconds_per_unit
            work.advance()
    return work


def test_work_projected_past_the_budget_is_refused_within_its_probe(clock):
    # 1000 units at 0.5 s: 500 s against a 5-minute budget, refused after 2 units (1.0 s)
    with budget(5, progress=False), pytest.raises(BudgetError) as info:
        run_units(clock, 1000, 0.5, 1000)
    message = str(info.value)
    assert "the job would take about 8 min (2 units/s measured over its first 1.0 s)" in message
    assert "past the 5-minute budget; lower --units, or raise --max-minutes" in message
    assert clock.now == pytest.approx(1000 + 1.0)


def test_work_within_the_budget_runs_to_the_end(clock):
    with budget(5, progress=False):
        work = run_units(clock, 500, 0.5, 500)  # 250 s against 300
    assert work.done == 500


def test_a_job_is_only_projected_while_young(clock):
    """Past its probe (20 s and 5 % of its units) a job is never refused: here the rate drops
    tenfold after 30 s, which projects it far past the budget, and it still finishes."""
    with budget(10, progress=False), job("the job", 1000, "unit", "lower --units") as work:
        for i in range(1000):
            clock.now += 0.1 if i < 300 else 10.0
            work.advance()
    assert work.done == 1000


def test_the_warm_up_units_do_not_count_towards_the_rate(clock):
    """A first epoch that compiles for a minute, then 1 s epochs: 100 epochs fit 5 minutes."""
    with budget(5, progress=False), job("training", 100, "epoch", "lower --epochs",
                                        warmup=1) as work:
        clock.now += 60
        work.advance()
        for _ in range(99):
            clock.now += 1
            work.advance()
    with budget(5, progress=False), pytest.raises(BudgetError, match=r"about 1\.7 h"), \
            job("training", 100, "epoch", "lower --epochs") as work:  # the same, no warm-up
        clock.now += 60
        work.advance()


def test_a_tiny_probe_refuses_only_what_it_puts_far_past_the_budget(clock):
    with budget(1, progress=False):  # 0.2 s per unit × 400 = 80 s: over, but not by 2×
        run_units(clock, 400, 0.2, 4)
    with budget(1, progress=False), pytest.raises(BudgetError):
        run_units(clock, 4000, 0.2, 4)  # 800 s: refused at once


def test_progress_lines_with_an_eta_when_not_a_terminal(clock):
    out = io.StringIO()
    with budget(60, progress=True, stream=out):
        run_units(clock, 100, 1.0, 100)
    lines = out.getvalue().splitlines()
    # quiet for the first 2 s, then at most one line per 10 s, and a last line at the end
    assert lines[0] == "the job:   2.0% (2/100 units), 2.0 s elapsed, ETA 2 min"
    assert lines[1].startswith("the job:  12.0% (12/100 units), 12 s elapsed, ETA 88 s")
    assert lines[-1].startswith("the job: 100.0% (100/100 units)")
    assert len(lines) == 11


def test_a_quick_job_and_a_job_without_a_budget_print_nothing(clock, capsys):
    out = io.StringIO()
    with budget(60, progress=True, stream=out):
        run_units(clock, 10, 0.1, 10)
    assert out.getvalue() == ""
    run_units(clock, 10, 100.0, 10)  # no budget: no projection, no output
    assert capsys.readouterr().err == ""


def test_nested_jobs_join_by_unit_and_report_partial_progress(clock):
    out = Terminal()
    with budget(60, progress=True, stream=out), job("lab", 4, "setting", "fewer",
                                                    units_are_jobs=True) as outer:
        for _ in range(4):
            with job("estimates", 10, "estimate", "lower --repeats") as inner:
                assert inner is not outer and inner.parent is outer
                with job("joined", 99, "estimate", "-") as same:
                    assert same is inner  # the same unit: one job, one bar
                for _ in range(10):
                    clock.now += 1
                    report(1, "estimate")
                    report(5, "something else")  # no open job counts it: ignored
            assert inner.done == 10 and outer.partial == 0.0
            outer.advance()
    text = out.getvalue()
    assert "lab 1/4 (ETA " in text and " · estimates: " in text
    # halfway through the first setting the lab projects 4 × 10 s
    assert "lab 1/4 (ETA 35 s) · estimates:  50.0%" in text


def test_the_outer_job_is_refused_from_its_first_nested_unit(clock):
    """The lab of 1000 settings is projected while its first setting runs."""
    with budget(5, progress=False), pytest.raises(BudgetError, match=r"^lab would take"), \
            job("lab", 1000, "setting", "fewer settings", units_are_jobs=True), \
            job("estimates", 10, "estimate", "lower --repeats") as inner:
        for _ in range(10):
            clock.now += 0.5
            inner.advance()


def test_bad_budgets_are_refused():
    for bad in (0, -1, float("nan"), "x", True):
        with pytest.raises(ConfigError, match="--max-minutes must be"), budget(bad):
            pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from tests.common import tiny_moons_run

    return tiny_moons_run(tmp_path_factory.mktemp("jobs") / "run")


@pytest.mark.parametrize("argv, what", [
    (["evaluate", "{run}", "--iw-samples", "100000000000"], "IWAE log-likelihood"),
    (["evaluate", "{run}", "--method", "ais", "--ais-leapfrog", "1000000000"],
     "AIS log-likelihood"),
    (["gap", "{run}", "--refine-steps", "1000000", "--num-points",
      "16", "--ais-steps", "0", "--max-steps", "100000000"], "per-point fits"),
    (["variance", "{run}", "--repeats", "1000000000", "--estimators", "reparam"],
     "variance lab"),
])
def test_commands_that_would_take_hours_are_refused_within_seconds(capsys, run_dir, argv,
                                                                    what):
    start = time.perf_counter()
    code = cli_main([a.format(run=run_dir) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"pyro-vae: error: {what} would take about")
    assert err[0].endswith("or raise --max-minutes")
    assert time.perf_counter() - start < 30


def test_a_lower_budget_refuses_sooner(capsys, run_dir):
    """--max-minutes lowered so far that a few seconds of work projects past it."""
    code = cli_main(["evaluate", str(run_dir), "--iw-samples", "3000000", "--max-minutes",
                     "0.05"])
    err = capsys.readouterr().err
    assert code == 2
    assert "IWAE log-likelihood would take about" in err and "past the 0.05-minute budget" in err


def test_training_refused_after_its_probe_keeps_its_epochs(capsys, tmp_path, monkeypatch):
    """A run projected past --max-minutes stops after the epochs it measured, with them saved
    for --resume, which continues under a larger budget."""
    monkeypatch.setattr(jobs, "MIN_PROBE_SECONDS", 0.0)
    out = tmp_path / "run"
    argv = ["train", "--dataset", "moons", "--hidden", "8", "--max-train", "64", "--max-test",
            "16", "--batch-size", "32", "--no-figures", "--no-progress", "--no-compile", "--out",
            str(out), "--epochs", "100000"]
    code = cli_main([*argv, "--max-minutes", "0.0001"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "training would take about" in err[0] and "--resume continues them" in err[0]
    assert (out / "checkpoint.pt").exists()
    assert cli_main([*argv[:-1], "3", "--resume"]) == 0


def test_checkpoints_are_written_after_the_first_epoch_every_ten_seconds_and_at_the_end(
        tmp_path, monkeypatch):
    """With --checkpoint-every unset: epochs 1 and the last of a fast run (each epoch advances a
    fake clock by 4 s: epochs 1, 4 (12 s after epoch 1), 7 and 8 here); with it set, its
    multiples and the last."""
    import pyro_vae.runs as runs
    from pyro_vae.config import Config

    clock = {"t": 0.0}
    monkeypatch.setattr(runs.time, "monotonic", lambda: clock["t"])
    written = []
    save = runs.save_checkpoint

    def recording_save(payload, path):
        written.append(payload["epoch"])
        save(payload, path)

    monkeypatch.setattr(runs, "save_checkpoint", recording_save)
    for every, expected in ((None, [1, 4, 7, 8]), (3, [3, 6, 8])):
        written.clear()
        clock["t"] = 0.0
        runs.train_run(Config(dataset="moons", hidden=(8,), max_train=64, max_test=16,
                              epochs=8, batch_size=32, checkpoint_every=every),
                       tmp_path / f"run{every}", progress=False, figures=False,
                       on_epoch=lambda m: clock.__setitem__("t", clock["t"] + 4.0))
        assert written == expected, (every, written)
        assert len(json.loads((tmp_path / f"run{every}" / "metrics.json").read_text())) == 8
