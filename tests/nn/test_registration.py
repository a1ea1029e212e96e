"""Training is never a silent no-op: whatever sequence of building, loading, clearing and
restoring the param store came before, one optimizer step moves the weights the forward pass
uses (issue: training that silently does nothing)."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

import pyro_vae
from pyro_vae.errors import ConfigError
from tests.common import changed, make_batch, small_vae, snapshot


def svi_step_moves(vae, x) -> list[str]:
    """One SVI step with Pyro's Adam; the names of the VAE parameters it changed."""
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    before = snapshot(vae)
    svi.step(x)
    return changed(before, vae)


def all_moved(vae, moved) -> bool:
    return set(moved) == {n for n, p in vae.named_parameters() if p.requires_grad}


def test_a_second_model_built_without_clearing_the_store_trains_and_keeps_its_weights():
    x = make_batch(8)
    first, second = small_vae(likelihood="gaussian-learned"), small_vae(
        likelihood="gaussian-learned")
    assert all_moved(first, svi_step_moves(first, x))
    fresh = snapshot(second)
    # the store now holds the first model's tensors under the same names
    assert all_moved(second, svi_step_moves(second, x))
    assert not torch.equal(fresh["decoder.net.0.weight"], first.decoder.net[0].weight)
    # and the first model, trained again, still trains its own tensors
    assert all_moved(first, svi_step_moves(first, x))


def test_clearing_the_store_between_steps_does_not_stop_training():
    x = make_batch(8)
    vae = small_vae()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(2):
        pyro.clear_param_store()
        before = snapshot(vae)
        svi.step(x)
        assert all_moved(vae, changed(before, vae))


def test_restoring_a_saved_store_restores_the_values_and_training_moves_them(tmp_path):
    x = make_batch(8)
    trained = small_vae(likelihood="gaussian-learned")
    for _ in range(3):
        svi_step_moves(trained, x)
    pyro.get_param_store().save(tmp_path / "store.pt")
    saved = snapshot(trained)

    pyro.clear_param_store()
    fresh = small_vae(likelihood="gaussian-learned")
    pyro.get_param_store().load(tmp_path / "store.pt")
    svi = SVI(fresh.model, fresh.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    loss_restored = svi.evaluate_loss(x)  # registration copies the stored values in
    assert all(torch.equal(saved[k], v) for k, v in fresh.named_parameters())
    assert torch.isfinite(torch.tensor(loss_restored))
    assert all_moved(fresh, svi_step_moves(fresh, x))


def test_two_loaded_checkpoints_each_train_their_own_weights(tmp_path):
    x = make_batch(8)
    for name in ("a", "b"):
        pyro.clear_param_store()
        vae = small_vae()
        svi_step_moves(vae, x)
        pyro_vae.save(vae, tmp_path / f"{name}.pt")
    a = pyro_vae.load(tmp_path / "a.pt", small_vae())
    b = pyro_vae.load(tmp_path / "b.pt", small_vae())
    weights_b = snapshot(b)
    for model in (a, b, a):
        model.train()
        assert all_moved(model, svi_step_moves(model, x))
    assert not any(torch.equal(weights_b[k], v) for k, v in b.named_parameters())


def test_load_state_dict_keeps_the_tensors_the_store_and_optimizer_hold():
    x = make_batch(8)
    vae, other = small_vae(), small_vae()
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    svi.step(x)
    vae.load_state_dict(other.state_dict())
    before = snapshot(vae)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())
    svi.step(x)
    assert all_moved(vae, changed(before, vae))


def test_a_store_value_of_another_shape_is_a_one_line_error():
    pyro.get_param_store().setdefault("decoder$$$net.0.weight", torch.zeros(3, 3))
    with pytest.raises(ConfigError, match="clear_param_store") as err:
        small_vae().model(make_batch(4))
    assert "\n" not in str(err.value)


def test_two_run_folders_loaded_with_load_run_each_train(tmp_path):
    config = pyro_vae.Config(dataset="moons", epochs=1, max_train=64, max_test=16,
                             batch_size=32, hidden=(8,))
    for name in ("a", "b"):
        pyro_vae.train_run(config.replace(seed=len(name) + (name == "b")), tmp_path / name,
                           progress=False, figures=False)
    runs = [pyro_vae.load_run(tmp_path / name) for name in ("a", "b")]
    x = runs[0].data.x_train[:16]
    for run in (*runs, runs[0]):
        vae = run.vae.train()
        assert all_moved(vae, svi_step_moves(vae, x))
