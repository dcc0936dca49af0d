"""Tests of MedFusionLib.engine.rbm: RBMs, CD-k, greedy stacking and unrolling."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from MedFusionLib.engine.rbm import (
    DEFAULT_LR,
    RBM,
    Standardise,
    TrainingCancelled,
    pretrain_stack,
    unroll,
)
from MedFusionLib.errors import InputError, MedFusionError


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smooth_blocks(count: int, size: int = 8, channels: int = 1, seed: int = 0) -> torch.Tensor:
    """``(count, channels * size * size)`` blocks of Gaussian-smoothed white noise (strongly correlated pixels)."""
    noise = torch.randn(count * channels, 1, size + 8, size + 8, generator=_gen(seed))
    kernel = torch.exp(-torch.arange(-4.0, 5.0) ** 2 / 8.0)
    kernel = kernel / kernel.sum()
    smooth = F.conv2d(F.conv2d(noise, kernel.view(1, 1, 1, 9)), kernel.view(1, 1, 9, 1))
    return smooth.reshape(count, channels * size * size)


def bars(count: int, size: int = 6, seed: int = 0) -> torch.Tensor:
    """Binary ``size x size`` bars images: either some rows or some columns are on (p = 0.3 each)."""
    g = _gen(seed)
    rows = (torch.rand(count, size, generator=g) < 0.3).float()
    cols = (torch.rand(count, size, generator=g) < 0.3).float()
    horizontal = torch.rand(count, generator=g) < 0.5
    images = torch.where(
        horizontal[:, None, None],
        rows[:, :, None].expand(count, size, size),
        cols[:, None, :].expand(count, size, size),
    )
    return images.reshape(count, size * size)


def _random_rbm(n_visible: int, n_hidden: int, visible: str, seed: int = 0, scale: float = 1.0) -> RBM:
    """A float64 RBM with O(1) random parameters (so energies are far from trivial)."""
    rbm = RBM(n_visible, n_hidden, visible, dtype=torch.float64)
    g = _gen(seed)
    with torch.no_grad():
        rbm.weight.copy_(scale * torch.randn(n_hidden, n_visible, generator=g, dtype=torch.float64))
        rbm.visible_bias.copy_(scale * torch.randn(n_visible, generator=g, dtype=torch.float64))
        rbm.hidden_bias.copy_(scale * torch.randn(n_hidden, generator=g, dtype=torch.float64))
    return rbm


def _energy(rbm: RBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(v, h) written from the definition, for a single v and h."""
    interaction = h @ rbm.weight @ v
    if rbm.visible == "gaussian":
        visible_term = 0.5 * ((v - rbm.visible_bias) ** 2).sum()
    else:
        visible_term = -(rbm.visible_bias @ v)
    return visible_term - rbm.hidden_bias @ h - interaction


def _enumerated_free_energy(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """-log sum_h exp(-E(v, h)) by brute force over all 2**n_hidden hidden states."""
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=rbm.n_hidden)), dtype=torch.float64)
    energies = torch.stack([_energy(rbm, v, h) for h in states])
    return -torch.logsumexp(-energies, dim=0)


# --------------------------------------------------------------------------- the RBM itself


def test_init_and_shapes():
    rbm = RBM(10, 7, "gaussian", generator=_gen(0))
    assert rbm.weight.shape == (7, 10)
    assert rbm.visible_bias.shape == (10,) and rbm.hidden_bias.shape == (7,)
    assert torch.count_nonzero(rbm.visible_bias) == 0 and torch.count_nonzero(rbm.hidden_bias) == 0
    # W ~ N(0, 0.01^2): 70 samples, std within a loose band around 0.01.
    assert 0.006 < float(rbm.weight.std()) < 0.014
    v = torch.randn(5, 10)
    assert rbm.hidden_probs(v).shape == (5, 7)
    assert rbm.hidden_probs(v[0]).shape == (7,)
    assert rbm.hidden_probs(torch.randn(2, 3, 10)).shape == (2, 3, 7)
    assert rbm.free_energy(v).shape == (5,)
    h = rbm.sample_hidden(v, _gen(1))
    assert h.shape == (5, 7) and set(h.unique().tolist()) <= {0.0, 1.0}
    assert rbm.visible_mean(h).shape == (5, 10)
    assert rbm.sample_visible(h, _gen(2)).shape == (5, 10)
    probs = rbm.hidden_probs(v)
    assert bool(((probs > 0) & (probs < 1)).all())
    assert torch.allclose(probs, torch.sigmoid(v @ rbm.weight.T + rbm.hidden_bias))


def test_visible_mean_and_sampling_per_type():
    h = (torch.rand(4000, 3, generator=_gen(0)) < 0.5).double()
    gaussian = _random_rbm(5, 3, "gaussian", seed=1)
    bernoulli = _random_rbm(5, 3, "bernoulli", seed=1)
    linear = h @ gaussian.weight + gaussian.visible_bias
    assert torch.allclose(gaussian.visible_mean(h), linear)
    assert torch.allclose(bernoulli.visible_mean(h), torch.sigmoid(linear))
    # Gaussian samples: mean + unit-variance noise.
    noise = gaussian.sample_visible(h, _gen(3)) - linear
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1.0) < 0.05
    # Bernoulli samples: binary, with the right frequency.
    samples = bernoulli.sample_visible(h, _gen(3))
    assert set(samples.unique().tolist()) == {0.0, 1.0}
    assert abs(float(samples.mean() - bernoulli.visible_mean(h).mean())) < 0.02
    # Hidden samples follow p(h | v).
    v = torch.randn(4000, 5, generator=_gen(4), dtype=torch.float64)
    assert abs(float(gaussian.sample_hidden(v, _gen(5)).mean() - gaussian.hidden_probs(v).mean())) < 0.02


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bernoulli_free_energy_matches_enumeration(seed):
    rbm = _random_rbm(3, 2, "bernoulli", seed=seed, scale=1.5)
    binary = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    fractional = torch.rand(4, 3, generator=_gen(seed + 10), dtype=torch.float64)
    for v in torch.cat([binary, fractional]):
        assert torch.allclose(rbm.free_energy(v), _enumerated_free_energy(rbm, v), atol=1e-12, rtol=0)
    # Batched call agrees with per-row calls.
    batched = rbm.free_energy(binary)
    assert torch.allclose(batched, torch.stack([rbm.free_energy(v) for v in binary]), atol=1e-12)
    # And the normalised distribution sums to one over all 8 states with both routes.
    log_z = torch.logsumexp(-batched, dim=0)
    enumerated = torch.stack([_enumerated_free_energy(rbm, v) for v in binary])
    assert torch.allclose(torch.exp(-enumerated - log_z).sum(), torch.tensor(1.0, dtype=torch.float64))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_free_energy_matches_enumeration(seed):
    rbm = _random_rbm(3, 2, "gaussian", seed=seed, scale=1.5)
    vs = 2.0 * torch.randn(6, 3, generator=_gen(seed + 20), dtype=torch.float64)
    for v in vs:
        enumerated = _enumerated_free_energy(rbm, v)
        closed = 0.5 * ((v - rbm.visible_bias) ** 2).sum() - F.softplus(rbm.hidden_bias + rbm.weight @ v).sum()
        assert torch.allclose(rbm.free_energy(v), enumerated, atol=1e-12, rtol=0)
        assert torch.allclose(closed, enumerated, atol=1e-12, rtol=0)


def test_gaussian_and_bernoulli_free_energies_differ():
    # Same parameters, different visible type: the visible term must differ.
    g, b = _random_rbm(3, 2, "gaussian"), _random_rbm(3, 2, "bernoulli")
    v = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    assert not torch.allclose(g.free_energy(v), b.free_energy(v))


def test_reconstruction_error_definition():
    rbm = _random_rbm(6, 4, "gaussian", seed=3)
    v = torch.randn(20, 6, generator=_gen(0), dtype=torch.float64)
    expected = ((v - rbm.visible_mean(rbm.hidden_probs(v))) ** 2).mean()
    assert rbm.reconstruction_error(v) == pytest.approx(float(expected), rel=1e-12)


def _reference_cd(rbm: RBM, batches, k, lr, momentum, weight_decay, seed):
    """Straightforward CD-k with momentum, written independently of the module."""
    W, b, c = rbm.weight.clone(), rbm.visible_bias.clone(), rbm.hidden_bias.clone()
    vW, vb, vc = torch.zeros_like(W), torch.zeros_like(b), torch.zeros_like(c)
    g = _gen(seed)
    gaussian = rbm.visible == "gaussian"
    errors = []
    for v0 in batches:
        p0 = torch.sigmoid(v0 @ W.T + c)
        h = (torch.rand(p0.shape, generator=g, dtype=p0.dtype) < p0).to(p0.dtype)
        for step in range(k):
            act = h @ W + b
            vk = act if gaussian else torch.sigmoid(act)
            if step == 0:
                errors.append(float(((v0 - vk) ** 2).mean()))
            pk = torch.sigmoid(vk @ W.T + c)
            if step < k - 1:
                h = (torch.rand(pk.shape, generator=g, dtype=pk.dtype) < pk).to(pk.dtype)
        n = v0.shape[0]
        gW = (p0.T @ v0 - pk.T @ vk) / n - weight_decay * W
        vW = momentum * vW + lr * gW
        vb = momentum * vb + lr * (v0 - vk).mean(0)
        vc = momentum * vc + lr * (p0 - pk).mean(0)
        W, b, c = W + vW, b + vb, c + vc
    return W, b, c, errors


@pytest.mark.parametrize("visible", ["gaussian", "bernoulli"])
@pytest.mark.parametrize("k", [1, 3])
def test_cd_step_matches_reference(visible, k):
    rbm = _random_rbm(5, 4, visible, seed=7, scale=0.5)
    data = torch.rand(3, 8, 5, generator=_gen(1), dtype=torch.float64)
    if visible == "gaussian":
        data = 2 * data - 1
    W, b, c, errors = _reference_cd(rbm, data, k, lr=0.05, momentum=0.7, weight_decay=0.01, seed=11)
    g = _gen(11)
    got = [rbm.contrastive_divergence_step(batch, k=k, lr=0.05, momentum=0.7, weight_decay=0.01, generator=g)
           for batch in data]
    assert got == pytest.approx(errors, rel=1e-12)
    assert torch.allclose(rbm.weight, W, atol=1e-12)
    assert torch.allclose(rbm.visible_bias, b, atol=1e-12)
    assert torch.allclose(rbm.hidden_bias, c, atol=1e-12)
    # The velocities persisted across steps (momentum was used): a reference without
    # momentum ends somewhere else.
    W0, _, _, _ = _reference_cd(_random_rbm(5, 4, visible, seed=7, scale=0.5), data, k, 0.05, 0.0, 0.01, 11)
    assert not torch.allclose(rbm.weight, W0, atol=1e-6)


def test_cd_default_lr_depends_on_visible_type():
    assert DEFAULT_LR["gaussian"] < DEFAULT_LR["bernoulli"]
    for visible in ("gaussian", "bernoulli"):
        rbm = _random_rbm(5, 4, visible, seed=2, scale=0.5)
        data = torch.rand(1, 8, 5, generator=_gen(1), dtype=torch.float64)
        W, _, _, _ = _reference_cd(rbm, data, 1, DEFAULT_LR[visible], 0.5, 2e-4, seed=3)
        rbm.contrastive_divergence_step(data[0], generator=_gen(3))
        assert torch.allclose(rbm.weight, W, atol=1e-12)


def test_stochastic_visible_runs_and_differs():
    data = smooth_blocks(64, size=4, seed=3).double()
    results = []
    for stochastic in (False, True):
        rbm = _random_rbm(16, 8, "gaussian", seed=1, scale=0.1)
        rbm.contrastive_divergence_step(data, k=2, lr=0.01, generator=_gen(0), stochastic_visible=stochastic)
        assert bool(torch.isfinite(rbm.weight).all())
        results.append(rbm.weight.clone())
    assert not torch.equal(results[0], results[1])


@pytest.mark.parametrize("k", [1, 3])
def test_cd_k_learns_bars(k):
    data = bars(1000, seed=4)
    rbm = RBM(36, 24, "bernoulli", generator=_gen(0))
    g = _gen(1)
    before = rbm.reconstruction_error(data)
    for _ in range(6):
        for batch in data.split(20):
            rbm.contrastive_divergence_step(batch, k=k, lr=0.1, momentum=0.5, generator=g)
    after = rbm.reconstruction_error(data)
    assert after < 0.6 * before


def test_fit_standardiser():
    rbm = RBM(3, 2)
    data = torch.tensor([[1.0, 5.0, 2.0], [3.0, 5.0, 4.0], [5.0, 5.0, 9.0]])
    rbm.fit_standardiser(data)
    assert torch.allclose(rbm.input_mean, data.mean(0))
    assert torch.allclose(rbm.input_std[[0, 2]], data.std(0, correction=0)[[0, 2]])
    z = rbm.standardise(data)
    assert bool(torch.isfinite(z).all())
    assert torch.allclose(z[:, 1], torch.zeros(3))  # constant feature -> 0, not NaN
    assert torch.allclose(z[:, [0, 2]].mean(0), torch.zeros(2), atol=1e-6)
    assert torch.allclose(z[:, [0, 2]].std(0, correction=0), torch.ones(2), atol=1e-6)
    assert torch.allclose(rbm.destandardise(z), data, atol=1e-5)
    assert "input_mean" in rbm.state_dict() and "weight_velocity" not in rbm.state_dict()


# --------------------------------------------------------------------------- pre-training


def test_pretrain_gaussian_reconstruction_drops():
    data = 3.0 * smooth_blocks(2000, seed=1) + 7.0  # raw scale/offset: standardisation must handle it
    rbms, history = pretrain_stack(data, [64, 32], epochs=5, batch_size=50, lr=[1e-2, 5e-2], generator=_gen(0))
    assert [r.visible for r in rbms] == ["gaussian", "bernoulli"]
    assert [(r.n_visible, r.n_hidden) for r in rbms] == [(64, 64), (64, 32)]
    assert torch.allclose(rbms[0].input_mean, data.mean(0))
    assert torch.equal(rbms[1].input_mean, torch.zeros(64))  # upper layers are not standardised
    for record in history:
        errors = record["reconstruction_error"]
        assert len(errors) == 5 and len(record["free_energy_gap"]) == 5
        assert errors[-1] <= 0.7 * errors[0], record
    # Smooth blocks are strongly correlated: after training the model prefers them to
    # the same pixels with the correlations destroyed.
    assert history[0]["free_energy_gap"][-1] > 5.0
    assert history[0]["free_energy_gap"][-1] > history[0]["free_energy_gap"][0]
    # The stored stats make the first layer see standardised data.
    z = rbms[0].standardise(data)
    assert rbms[0].reconstruction_error(z) < 0.7 * float(z.var(correction=0))


def test_pretrain_bernoulli_bars_reconstruction_and_free_energy():
    data = bars(2000, seed=2)
    rbms, history = pretrain_stack(data, [32], epochs=5, batch_size=20, lr=0.1,
                                   visible="bernoulli", generator=_gen(0))
    errors = history[0]["reconstruction_error"]
    assert errors[-1] <= 0.7 * errors[0]
    rbm = rbms[0]
    # Noise with the same pixel density: training data must get clearly lower free energy.
    noise = (torch.rand(2000, 36, generator=_gen(9)) < data.mean()).float()
    gap = float(rbm.free_energy(noise).mean() - rbm.free_energy(data).mean())
    assert gap > 5.0
    # An untrained RBM (same init) does not separate them: the gap was learned.
    fresh = RBM(36, 32, "bernoulli", generator=_gen(0))
    assert abs(float(fresh.free_energy(noise).mean() - fresh.free_energy(data).mean())) < 1.0
    assert history[0]["free_energy_gap"][-1] > 5.0


def test_pretrain_with_default_learning_rates_still_learns():
    data = smooth_blocks(4000, channels=2, seed=5)
    _, history = pretrain_stack(data, [32], epochs=4, batch_size=20, generator=_gen(0))
    assert history[0]["lr"] == DEFAULT_LR["gaussian"]
    errors = history[0]["reconstruction_error"]
    assert errors[-1] < 0.8 * errors[0]


def test_same_seed_identical_different_seed_differs():
    data = smooth_blocks(300, size=4, seed=6)
    kwargs = dict(layer_sizes=[12, 6], epochs=2, batch_size=32, k=2)
    a, ha = pretrain_stack(data, generator=_gen(42), **kwargs)
    b, hb = pretrain_stack(data, generator=_gen(42), **kwargs)
    c, _ = pretrain_stack(data, generator=_gen(43), **kwargs)
    for ra, rb, rc in zip(a, b, c):
        for name in ("weight", "visible_bias", "hidden_bias"):
            assert torch.equal(getattr(ra, name), getattr(rb, name))
        assert not torch.equal(ra.weight, rc.weight)
    assert [h["reconstruction_error"] for h in ha] == [h["reconstruction_error"] for h in hb]


def test_pretrain_keeps_dtype_and_converts_integers():
    data64 = smooth_blocks(100, size=4, seed=1).double()
    rbms, _ = pretrain_stack(data64, [5], epochs=1, batch_size=16, generator=_gen(0))
    assert rbms[0].weight.dtype == torch.float64
    ints = (smooth_blocks(100, size=4, seed=1) * 100).round().to(torch.int32)
    rbms, _ = pretrain_stack(ints, [5], epochs=1, batch_size=16, generator=_gen(0))
    assert rbms[0].weight.dtype == torch.get_default_dtype()


def test_progress_and_cancel():
    data = smooth_blocks(200, size=4, seed=7)
    calls = []
    pretrain_stack(data, [8, 4], epochs=3, batch_size=50, generator=_gen(0),
                   progress=lambda fraction, message: calls.append((fraction, message)))
    fractions = [f for f, _ in calls]
    assert len(calls) == 6 and fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert all(isinstance(m, str) and m for _, m in calls)

    event = threading.Event()
    event.set()
    with pytest.raises(TrainingCancelled):
        pretrain_stack(data, [8], epochs=3, batch_size=50, cancel=event)

    class CancelAfter:  # set in the middle of the second layer
        def __init__(self, n):
            self.n = n

        def is_set(self):
            self.n -= 1
            return self.n < 0

    with pytest.raises(TrainingCancelled, match="layer 2/2"):
        pretrain_stack(data, [8, 4], epochs=3, batch_size=50, cancel=CancelAfter(14))
    assert issubclass(TrainingCancelled, MedFusionError)
    # An event that is never set does not interrupt anything.
    rbms, _ = pretrain_stack(data, [8], epochs=1, batch_size=50, cancel=threading.Event())
    assert len(rbms) == 1


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(layer_sizes=[]), "layer_sizes"),
        (dict(layer_sizes=[8, 0]), r"layer_sizes\[1\]"),
        (dict(layer_sizes=[-3]), r"layer_sizes\[0\]"),
        (dict(layer_sizes=[2.5]), r"layer_sizes\[0\]"),
        (dict(layer_sizes=[True]), r"layer_sizes\[0\]"),
        (dict(layer_sizes=8), "layer_sizes"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=0), "batch_size"),
        (dict(k=0), "^k"),
        (dict(lr=-0.1), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(lr=[0.1, 0.1]), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(visible="poisson"), "visible"),
        (dict(generator="seed"), "generator"),
        (dict(progress=3), "progress"),
        (dict(cancel=object()), "cancel"),
    ],
)
def test_pretrain_bad_arguments(kwargs, pattern):
    args = dict(data=smooth_blocks(20, size=2), layer_sizes=[4], epochs=1, batch_size=4)
    args.update(kwargs)
    with pytest.raises(InputError, match=pattern):
        pretrain_stack(**args)


@pytest.mark.parametrize(
    "data",
    [
        torch.randn(10),
        torch.randn(4, 2, 2),
        torch.randn(1, 4),
        torch.randn(5, 0),
        torch.tensor([[0.0, float("nan")], [1.0, 2.0]]),
        torch.tensor([[0.0, float("inf")], [1.0, 2.0]]),
        [[0.0, 1.0], [1.0, 0.0]],
    ],
    ids=["1d", "3d", "one-sample", "no-features", "nan", "inf", "list"],
)
def test_pretrain_bad_data(data):
    with pytest.raises(InputError, match="data"):
        pretrain_stack(data, [4], epochs=1, batch_size=2)


def test_pretrain_bernoulli_rejects_values_outside_unit_interval():
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        pretrain_stack(torch.tensor([[0.0, 1.5], [1.0, 0.0]]), [2], 1, 2, visible="bernoulli")


def test_rbm_bad_arguments():
    for args in [(0, 3), (3, -1), (2.0, 3), (3, 3, "poisson")]:
        with pytest.raises(InputError):
            RBM(*args)
    with pytest.raises(InputError, match="dtype"):
        RBM(3, 2, dtype=torch.int64)
    rbm = RBM(4, 3)
    with pytest.raises(InputError, match=r"\(\.\.\., 4\)"):
        rbm.hidden_probs(torch.randn(2, 5))
    with pytest.raises(InputError, match="float64"):
        rbm.hidden_probs(torch.randn(2, 4, dtype=torch.float64))
    with pytest.raises(InputError, match="h"):
        rbm.visible_mean(torch.randn(2, 4))
    with pytest.raises(InputError, match="batch"):
        rbm.contrastive_divergence_step(torch.randn(4))
    with pytest.raises(InputError, match="^k"):
        rbm.contrastive_divergence_step(torch.randn(2, 4), k=0)
    with pytest.raises(InputError, match="lr"):
        rbm.contrastive_divergence_step(torch.randn(2, 4), lr=0.0)
    with pytest.raises(InputError, match="momentum"):
        rbm.contrastive_divergence_step(torch.randn(2, 4), momentum=-0.1)


# --------------------------------------------------------------------------- unrolling


def test_unroll_layers_and_forward():
    data = 5.0 + 2.0 * smooth_blocks(300, size=4, channels=2, seed=8)
    rbms, _ = pretrain_stack(data, [20, 10], epochs=2, batch_size=30, generator=_gen(0))
    net = unroll(rbms, n_outputs=16, generator=_gen(1))
    kinds = [type(m) for m in net]
    assert kinds == [Standardise, nn.Linear, nn.Sigmoid, nn.Linear, nn.Sigmoid, nn.Linear]
    assert net[1].weight.shape == (20, 32) and net[3].weight.shape == (10, 20)
    assert net[5].weight.shape == (16, 10) and net[5].bias.shape == (16,)
    assert net(data).shape == (300, 16)
    # The recognition layers reproduce the RBMs' hidden probabilities exactly.
    h1 = rbms[0].hidden_probs(rbms[0].standardise(data))
    assert torch.allclose(net[:3](data), h1, atol=1e-6)
    assert torch.allclose(net[:5](data), rbms[1].hidden_probs(h1), atol=1e-6)
    # Output layer: small random weights, zero bias (or the requested bias).
    assert 0.0 < float(net[5].weight.detach().std()) < 0.02 and torch.count_nonzero(net[5].bias) == 0
    net_b = unroll(rbms, 16, output_bias=torch.arange(16.0))
    assert torch.equal(net_b[5].bias.detach(), torch.arange(16.0))
    assert all(p.requires_grad for p in net.parameters())
    # The network holds copies: changing it leaves the RBM alone.
    with torch.no_grad():
        net[1].weight.add_(1.0)
    assert not torch.allclose(net[1].weight, rbms[0].weight)


def test_unrolled_net_is_trainable():
    # Toy block fusion: two source blocks -> the pixel-wise maximum.
    data = smooth_blocks(512, size=4, channels=2, seed=9)
    target = torch.maximum(data[:, :16], data[:, 16:])
    rbms, _ = pretrain_stack(data, [32, 16], epochs=2, batch_size=32, generator=_gen(0))
    torch.manual_seed(0)
    net = unroll(rbms, 16, output_bias=target.mean(0), generator=_gen(1))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = F.mse_loss(net(data), target)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    # Fine-tuning moved the pre-trained layers too (gradients reach them).
    assert not torch.allclose(net[1].weight, rbms[0].weight)
    assert torch.equal(net[0].mean, rbms[0].input_mean)  # the standardisation is fixed


def test_unroll_bad_arguments():
    a, b = RBM(8, 4), RBM(5, 2, "bernoulli")
    with pytest.raises(InputError, match="rbms"):
        unroll([], 3)
    with pytest.raises(InputError, match="rbms"):
        unroll(a, 3)
    with pytest.raises(InputError, match=r"rbms\[1\]"):
        unroll([a, b], 3)
    with pytest.raises(InputError, match="n_outputs"):
        unroll([a], 0)
    with pytest.raises(InputError, match="output_bias"):
        unroll([a], 3, output_bias=torch.zeros(4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda():
    device = torch.device("cuda")
    data = smooth_blocks(400, size=4, channels=2, seed=3).to(device)
    g = torch.Generator(device=device).manual_seed(0)
    rbms, history = pretrain_stack(data, [16, 8], epochs=3, batch_size=40, lr=[1e-2, 5e-2], generator=g)
    assert all(r.weight.device.type == "cuda" for r in rbms)
    assert history[0]["reconstruction_error"][-1] < history[0]["reconstruction_error"][0]
    again, _ = pretrain_stack(data, [16, 8], epochs=3, batch_size=40, lr=[1e-2, 5e-2],
                              generator=torch.Generator(device=device).manual_seed(0))
    assert torch.equal(rbms[1].weight, again[1].weight)
    net = unroll(rbms, 16, generator=torch.Generator(device=device).manual_seed(1))
    assert net(data).device.type == "cuda"
    assert torch.allclose(net[:3](data), rbms[0].hidden_probs(rbms[0].standardise(data)), atol=1e-6)
    with pytest.raises(InputError, match="generator"):
        pretrain_stack(data, [4], epochs=1, batch_size=40, generator=_gen(0))
