"""Shared fixtures: every test starts from a fixed seed and an empty Pyro param store. Helpers
live in :mod:`tests.common`.

Speed (issue 28): the suite runs on ``pytest-xdist`` workers (``-n auto --dist loadgroup`` in
``pyproject.toml``). Each process gets one torch thread: the models here are small, and two
OpenMP threads per process spin against the other worker on a 2-core machine (measured: the
same four tests took 45.6 s of CPU with two threads, 16.7 s with one). The environment
variables reach the subprocesses the tests start (CLI runs, examples, notebook kernels, DDP
workers). The slowest tests are scheduled first, so that no long test starts last on one worker
while the other idles.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# TorchInductor compiles in-process rather than starting a pool of compile workers per process.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from pyro_vae import VAE  # noqa: E402
from tests.common import small_vae  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

#: Seconds each slow test took on the 2-core machine (the README's test command, idle cores;
#: the two TorchInductor tests with a cold compile cache, as in a fresh clone; only the order
#: matters): the scheduler hands these out first, the many quick tests fill in the end.
#: A key is ``path::test`` (every parametrization) or a full node id; a test not listed is quick.
SLOW = {
    "tests/infer/test_distributed.py::test_two_ddp_workers_stay_in_sync_and_match_a_single_pr"
    "ocess_run": 19,
    "tests/test_examples.py::test_example_smoke[discrete]": 18,
    "tests/infer/test_compiled.py::test_trainer_compiled_run_follows_the_uncompiled_one": 17,
    "tests/test_docs.py::test_sphinx_site_builds_with_warnings_as_errors": 16,
    "tests/lab/test_gap.py::test_a_gaussian_per_point_loses_the_other_modes_mass_and_no_fit_c"
    "rosses_log_px": 7,
    "tests/test_docs.py::test_tutorial_runs_top_to_bottom[own_model]": 11,
    "tests/test_examples.py::test_example_smoke[inference_gaps]": 11,
    "tests/test_docs.py::test_tutorial_runs_top_to_bottom[discrete_latents]": 8,
    "tests/lab/test_gap_semi_amortized.py::test_refinement_closes_a_growing_fraction_of_the_a"
    "mortization_gap": 7,
    "tests/infer/test_distributed.py::test_a_one_worker_ddp_run_of_the_default_model_evaluate"
    "s_like_the_trainer": 7,
    "tests/lab/test_gap.py::test_each_point_stops_on_its_own_and_the_prior_start_probe": 6,
    "tests/infer/test_discrete.py::test_relaxations_are_biased_less_as_the_temperature_falls_"
    "and_noisier": 6,
    "tests/models/test_vae_module.py::test_nuts_on_z_matches_the_closed_form_posterior_of_a_l"
    "inear_gaussian_model": 6,
    "tests/lab/test_gap.py::test_ais_reaches_the_trained_circle_models_exact_log_likelihood": 5,
    "tests/test_examples.py::test_example_smoke[estimator_training]": 5,
    "tests/lab/test_gap.py::test_the_full_covariance_family_closes_the_approximation_gap_with"
    "_ais_in_the_sandwich": 5,
    "tests/lab/test_gap_semi_amortized.py::test_a_trained_semi_amortized_guide_is_reported_ag"
    "ainst_its_own_encoder": 5,
    "tests/infer/test_ais.py::test_ais_reaches_the_exact_log_likelihood_within_002_nats_at_ev"
    "ery_point": 5,
    "tests/models/test_linear_vae_ppca.py::test_linear_vae_elbo_optimum_is_the_exact_ppca_lik"
    "elihood": 5,
    "tests/test_docs.py::test_user_guide_model_page_runs_and_does_what_it_says": 5,
    "tests/test_reliability.py::test_sigkill_at_any_moment_then_resume_loses_nothing[0.5]": 5,
    "tests/test_docs.py::test_readme_example_runs": 5,
    "tests/infer/test_discrete.py::test_unbiased_estimators_match_the_exact_gradient[score-1]": 5,
    "tests/test_reliability.py::test_k_50000_on_moons_runs_within_a_small_address_space_limit": 5,
    "tests/lab/test_variance_user_models.py::test_binary_estimators_in_the_lab_are_unbiased_a"
    "nd_priced": 5,
    "tests/infer/test_estimators.py::test_pyro_machinery_agrees_with_the_explicit_surrogates["
    "mc-score-nn]": 4,
    "tests/infer/test_vem.py::test_vem_diagonal_q_reaches_the_exact_kl_optimum_on_ppca": 4,
    "tests/test_layout.py::test_importing_the_library_selects_no_matplotlib_backend": 4,
    "tests/test_docs.py::test_tutorial_runs_top_to_bottom[plain_pyro_vae]": 4,
    "tests/test_examples.py::test_example_smoke[moons]": 4,
    "tests/test_cli.py::test_console_script_runs_as_a_new_user_would": 4,
    "tests/infer/test_distributed.py::test_missing_nodes_stop_the_run_after_the_rendezvous_ti"
    "meout": 4,
    "tests/infer/test_ais_user_models.py::test_nuts_returns_every_site_of_a_hierarchy_with_th"
    "e_exact_posterior_moments": 4,
    "tests/lab/test_variance_user_models.py::test_score_function_on_a_site_named_code_is_the_"
    "score_function": 4,
    "tests/infer/test_discrete.py::test_vimco_bound_is_the_iwae_bound": 4,
    "tests/test_docs.py::test_tutorial_runs_top_to_bottom[amortization_gap]": 4,
    "tests/infer/test_binary.py::test_variance_ordering_at_equal_cost": 4,
    "tests/lab/test_variance_user_models.py::test_score_function_on_a_two_layer_hierarchy_is_"
    "unbiased_and_noisier": 4,
    "tests/lab/test_gap.py::test_a_poor_encoder_no_longer_yields_a_negative_approximation_gap": 3,
    "tests/infer/test_ais.py::test_bdmc_sandwiches_the_exact_log_likelihood": 3,
    "tests/infer/test_discrete.py::test_unbiased_estimators_match_the_exact_gradient[score-nn"
    "-1]": 3,
    "tests/test_examples.py::test_example_smoke[vem_vs_vae]": 3,
    "tests/test_examples.py::test_example_smoke[beta_vae]": 3,
    "tests/test_examples.py::test_example_smoke[circle]": 3,
    "tests/infer/test_elbo.py::test_trace_and_meanfield_agree_in_expectation": 3,
    "tests/infer/test_ais_user_models.py::test_ais_from_the_prior_reaches_the_exact_log_likel"
    "ihood_of_user_models[hierarchy_topdown]": 3,
    "tests/infer/test_discrete.py::test_unbiased_estimators_match_the_exact_gradient[score-av"
    "g-1]": 3,
    "tests/lab/test_snr.py::test_the_literatures_shapes_on_the_gaussian_toy": 3,
    "tests/test_loggers.py::test_mlflow_file_store_holds_params_metrics_and_figures": 2,
    "tests/infer/test_ais_user_models.py::test_bdmc_sandwiches_the_exact_log_likelihood_of_si"
    "mulated_data[hierarchy_topdown]": 2,
    "tests/infer/test_binary.py::test_mixed_model_continuous_site_stays_pathwise": 2,
    "tests/infer/test_vem.py::test_per_point_fits_converge_to_the_family_optimum_within_0005_"
    "nats[diag]": 2,
    "tests/test_checkpoint.py::test_a_damaged_data_description_is_a_one_line_error[event_shap"
    "e2]": 2,
    "tests/infer/test_ais_user_models.py::test_ais_from_the_prior_reaches_the_exact_log_likel"
    "ihood_of_user_models[labelled]": 2,
}

#: Modules whose module-scoped fixture (a trained run) several tests share: each runs whole on
#: one worker, so the fixture is built once.
ONE_WORKER = ("tests/test_cli.py", "tests/test_checkpoint.py", "tests/test_hostile.py",
              "tests/test_reliability.py")


#: Where the last run's durations are kept (pytest's cache folder, absent in a fresh clone).
DURATIONS_KEY = "pyro_vae/durations"


def _weight(item: pytest.Item, measured: dict[str, float]) -> float:
    nodeid = item.nodeid.split("@")[0]
    if nodeid in measured:
        return measured[nodeid]
    return SLOW.get(nodeid, SLOW.get(nodeid.split("[")[0], 0.0))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Runs after pytest-randomly's shuffle (a hook wrapper) and before xdist reads the groups.
    On xdist workers the slow tests move to the front (a stable sort: every other test keeps
    the shuffled order), by the last run's durations where the cache has them, else by
    :data:`SLOW`; a run without workers (``-n 0``) keeps the shuffled order as it is."""
    for item in items:
        path = item.nodeid.split("::")[0]
        if path in ONE_WORKER:
            item.add_marker(pytest.mark.xdist_group(path))
    if hasattr(config, "workerinput"):
        cache = getattr(config, "cache", None)
        measured = cache.get(DURATIONS_KEY, {}) if cache is not None else {}
        items.sort(key=lambda item: -_weight(item, measured))


_durations: dict[str, float] = {}


def pytest_runtest_logreport(report):
    """In the controlling process: each test's time (setup, call and teardown)."""
    nodeid = report.nodeid.split("@")[0]
    _durations[nodeid] = _durations.get(nodeid, 0.0) + report.duration


def pytest_sessionfinish(session):
    config = session.config
    cache = getattr(config, "cache", None)
    if cache is None or hasattr(config, "workerinput") or not _durations:
        return
    cache.set(DURATIONS_KEY, {**cache.get(DURATIONS_KEY, {}),
                              **{k: round(v, 2) for k, v in _durations.items()}})


def pytest_terminal_summary(terminalreporter, config):
    """The test order's seed, even under -q (pytest-randomly prints it only in the header)."""
    seed = getattr(config.option, "randomly_seed", None)
    if isinstance(seed, int) and config.pluginmanager.hasplugin("randomly"):
        terminalreporter.write_line(f"test order: --randomly-seed={seed}")


@pytest.fixture(autouse=True)
def _seeded():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


@pytest.fixture
def tiny_vae() -> VAE:
    return small_vae()
