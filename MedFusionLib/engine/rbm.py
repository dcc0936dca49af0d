"""Restricted Boltzmann machines, greedy stacking and unrolling for block fusion.

The "deep Boltzmann machine" fusion model of Li et al. (2020, "Medical image
fusion method by deep learning") learns image blocks with a stack of RBMs:
the ``K`` co-registered source blocks of side ``n`` are flattened and
concatenated into one ``K * n * n`` vector, a Gaussian--Bernoulli RBM models
those real-valued vectors, Bernoulli--Bernoulli RBMs model the hidden
activities of the layer below, and the pre-trained stack is then unrolled into
a feed-forward network that is fine-tuned, supervised, to output the target
(fused) block of ``n * n`` values.  This module provides the unsupervised part
and the unrolling; the supervised fine-tuning loop lives elsewhere.

Model (one RBM, ``W`` of shape ``(n_hidden, n_visible)``, visible bias ``b``,
hidden bias ``c``, binary hidden units ``h``):

* Bernoulli visible units ``v in {0, 1}`` (Hinton 2002)::

      E(v, h) = -b.v - c.h - h.W v
      p(h_j = 1 | v) = sigmoid(c_j + W_j. v)
      p(v_i = 1 | h) = sigmoid(b_i + W_.i . h)
      F(v) = -log sum_h exp(-E(v, h)) = -b.v - sum_j softplus(c_j + W_j. v)

* Gaussian visible units with unit variance, ``v`` real (Hinton &
  Salakhutdinov 2006; Hinton 2010, section 13.2)::

      E(v, h) = ||v - b||^2 / 2 - c.h - h.W v
      p(h_j = 1 | v) = sigmoid(c_j + W_j. v)
      p(v | h) = Normal(b + W^T h, I)
      F(v) = ||v - b||^2 / 2 - sum_j softplus(c_j + W_j. v)

  Unit variance is only sensible if every visible feature has been
  standardised to zero mean and unit variance, which is what learning the
  variances would otherwise have to do (and doing so is notoriously unstable
  with CD).  :meth:`RBM.fit_standardiser` stores the per-feature mean and
  standard deviation of the training data in buffers of the RBM (so they are
  saved with it); :meth:`RBM.standardise` applies them.  All other methods of
  :class:`RBM` work in the *standardised* space.  :func:`pretrain_stack` does
  this for the first layer, and :func:`unroll` puts a fixed
  :class:`Standardise` layer in front of the network, so the unrolled network
  takes raw blocks.

Training is contrastive divergence CD-k (Hinton 2002) with momentum and L2
weight decay, with the defaults of Hinton's "A Practical Guide to Training
Restricted Boltzmann Machines" (UTML TR 2010-003, cited below as "the guide"):
weights ``N(0, 0.01^2)``, hidden biases 0, visible biases ``log(p / (1 - p))``
for Bernoulli units, momentum 0.5 then 0.9, weight cost 2e-4, and a learning
rate one to two orders of magnitude smaller for Gaussian visible units
(:data:`DEFAULT_LR`) because their reconstructions are unbounded.

Stacking follows Hinton & Salakhutdinov (2006, "Reducing the dimensionality
of data with neural networks"): each RBM is trained on the hidden
probabilities of the one below, and the stack is unrolled into sigmoid layers
initialised with the RBM weights.  (A true DBM, Salakhutdinov & Hinton 2009,
"Deep Boltzmann machines", additionally halves/doubles the weights of the
outer layers during pre-training and trains all layers jointly with
mean-field inference; the paper's "DBM implemented by superimposing multi-layer
RBMs" is the greedy stack implemented here, and for a feed-forward regressor
that is fine-tuned anyway the difference only affects the initialisation.)

Devices and reproducibility: everything runs on the device and in the
floating dtype of the tensors and modules passed in; nothing is moved to or
created on a fixed device.  All randomness comes from an optional
:class:`torch.Generator`, which must live on the same device as the data
(``torch.Generator(device=data.device)``); with the same seed, data and
arguments, training on the CPU is bit-for-bit reproducible.  ``None`` uses
torch's global RNG.
"""

from __future__ import annotations

import math
import numbers
import time
from typing import Any, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import Cancelled, InputError
from ..progress import ProgressCallback
from ..validation import check_int, is_integer

__all__ = [
    "DEFAULT_LR",
    "DEFAULT_MOMENTUM",
    "DEFAULT_FINAL_MOMENTUM",
    "DEFAULT_MOMENTUM_SWITCH_EPOCH",
    "DEFAULT_WEIGHT_DECAY",
    "DEFAULT_INIT_STD",
    "VISIBLE_TYPES",
    "RBM",
    "Standardise",
    "TrainingCancelled",
    "pretrain_stack",
    "unroll",
]

#: Visible unit types understood by :class:`RBM`.
VISIBLE_TYPES = ("gaussian", "bernoulli")

#: Default CD learning rate per visible type.  The guide (section 13.2) asks for a
#: rate one to two orders of magnitude smaller for Gaussian visible units than for
#: binary ones: their reconstructions are linear and unbounded, so a large step
#: makes the weights explode.  The rates are per *batch mean* gradient.  They are
#: conservative: on 20k blocks (200 updates per epoch) the reconstruction error
#: decreases steadily and levels off after ~8 epochs, while 10x larger rates
#: level off after ~2 epochs but wobble once momentum rises to 0.9.  With only a
#: few hundred updates in total (small data sets) pass larger rates, e.g.
#: ``lr=[1e-2, 1e-1]`` (Hinton & Salakhutdinov's code uses 0.1 for binary layers).
DEFAULT_LR: dict[str, float] = {"gaussian": 1e-3, "bernoulli": 1e-2}

#: Momentum for the first epochs and afterwards (the guide, section 9; Hinton &
#: Salakhutdinov's code switches after epoch 5): low momentum while the large
#: initial changes happen, high momentum once learning has settled.
DEFAULT_MOMENTUM = 0.5
DEFAULT_FINAL_MOMENTUM = 0.9
DEFAULT_MOMENTUM_SWITCH_EPOCH = 5

#: L2 weight cost (the guide, section 10, suggests 1e-2 .. 1e-5; 2e-4 is the
#: value of Hinton & Salakhutdinov's code).  Applied to weights only, not biases.
DEFAULT_WEIGHT_DECAY = 2e-4

#: Standard deviation of the initial weights (the guide, section 8).
DEFAULT_INIT_STD = 0.01

#: Samples used to monitor the free-energy gap in :func:`pretrain_stack`.
_MONITOR_SAMPLES = 1024

#: Rows propagated at once when computing a layer's hidden probabilities for the next layer.
_PROPAGATE_CHUNK = 65536


class TrainingCancelled(Cancelled):
    """Training was stopped because the caller's ``cancel`` event was set."""


class CancelEvent(Protocol):
    """Anything with an ``is_set()`` method, e.g. :class:`threading.Event`."""

    def is_set(self) -> bool: ...


# --------------------------------------------------------------------------- helpers


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


def _check_real(value: object, name: str, low: float, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = False) -> float:
    if not _is_real(value):
        raise InputError(f"{name}: expected a finite real number, got {value!r}")
    x = float(value)
    too_low = x < low if low_inclusive else x <= low
    too_high = high is not None and (x > high if high_inclusive else x >= high)
    if too_low or too_high:
        lo = "[" if low_inclusive else "("
        hi = ("]" if high_inclusive else ")") if high is not None else ")"
        raise InputError(f"{name}: expected a value in {lo}{low}, {high if high is not None else 'inf'}{hi}, got {x!r}")
    return x


def _check_generator(generator: torch.Generator | None, device: torch.device, name: str = "generator") -> None:
    if generator is None:
        return
    if not isinstance(generator, torch.Generator):
        raise InputError(f"{name}: expected a torch.Generator or None, got {type(generator).__name__}")
    # torch's samplers need the generator on the device they sample on.
    if torch.device(generator.device).type != torch.device(device).type:
        raise InputError(
            f"{name}: the generator lives on {generator.device} but the data on {device}; "
            f"create it with torch.Generator(device={str(device)!r})"
        )


def _uniform(shape: torch.Size, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)


def _bernoulli(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # u < p is Bernoulli(p); written out so it takes the generator on every device.
    return (_uniform(probs.shape, probs, generator) < probs).to(probs.dtype)


# --------------------------------------------------------------------------- RBM


class RBM(nn.Module):
    """A restricted Boltzmann machine with binary hidden units.

    Parameters (all ``nn.Parameter``, so the module moves with ``.to()``):
    ``weight`` ``W`` of shape ``(n_hidden, n_visible)`` -- the same layout as
    :attr:`torch.nn.Linear.weight`, so ``hidden_probs(v) = sigmoid(v @ W.T + c)``
    -- ``visible_bias`` ``b`` ``(n_visible,)`` and ``hidden_bias`` ``c``
    ``(n_hidden,)``.  Gradients are never computed through them: CD updates are
    explicit, under :func:`torch.no_grad`.

    Buffers: ``input_mean`` / ``input_std`` (the standardisation of raw inputs,
    identity until :meth:`fit_standardiser` is called; saved in the state dict)
    and the momentum velocities of the three parameters (not saved).

    :param n_visible: number of visible units (``K * n * n`` for the first layer).
    :param n_hidden: number of hidden units.
    :param visible: ``"gaussian"`` (real-valued, unit variance, for standardised
        data) or ``"bernoulli"`` (values in ``[0, 1]``, e.g. hidden probabilities
        of the layer below).
    :param generator: RNG for the initial weights ``W_ij ~ N(0, init_std^2)``;
        must live on ``device``.  Biases start at 0 (:func:`pretrain_stack` sets
        Bernoulli visible biases from the data, the guide's section 8).
    :param init_std: standard deviation of the initial weights (default 0.01, the guide).
    :param device: device of the parameters (default: torch's default device).
    :param dtype: floating dtype of the parameters (default: torch's default dtype).
    """

    def __init__(
        self,
        n_visible: int,
        n_hidden: int,
        visible: str = "gaussian",
        *,
        generator: torch.Generator | None = None,
        init_std: float = DEFAULT_INIT_STD,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        n_visible = check_int(n_visible, "n_visible")
        n_hidden = check_int(n_hidden, "n_hidden")
        if visible not in VISIBLE_TYPES:
            raise InputError(f"visible: expected one of {', '.join(map(repr, VISIBLE_TYPES))}, got {visible!r}")
        init_std = _check_real(init_std, "init_std", 0.0)
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise InputError(f"dtype: expected a floating torch dtype, got {dtype!r}")
        factory = {"device": device, "dtype": dtype}
        weight = torch.empty((n_hidden, n_visible), **factory)
        _check_generator(generator, weight.device)
        weight.normal_(0.0, init_std, generator=generator)

        self.n_visible = n_visible
        self.n_hidden = n_hidden
        self.visible = visible
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.visible_bias = nn.Parameter(torch.zeros(n_visible, **factory), requires_grad=False)
        self.hidden_bias = nn.Parameter(torch.zeros(n_hidden, **factory), requires_grad=False)
        self.register_buffer("input_mean", torch.zeros(n_visible, **factory))
        self.register_buffer("input_std", torch.ones(n_visible, **factory))
        # Velocities are optimiser state, not model state: kept out of the state dict.
        self.register_buffer("weight_velocity", torch.zeros_like(weight), persistent=False)
        self.register_buffer("visible_bias_velocity", torch.zeros(n_visible, **factory), persistent=False)
        self.register_buffer("hidden_bias_velocity", torch.zeros(n_hidden, **factory), persistent=False)

    def extra_repr(self) -> str:
        return f"n_visible={self.n_visible}, n_hidden={self.n_hidden}, visible={self.visible!r}"

    @property
    def default_lr(self) -> float:
        """The default CD learning rate for this RBM's visible type (:data:`DEFAULT_LR`)."""
        return DEFAULT_LR[self.visible]

    # ------------------------------------------------------------------ input checks

    def _check_visible(self, v: object, name: str = "v") -> torch.Tensor:
        if not isinstance(v, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor, got {type(v).__name__}")
        if v.ndim < 1 or v.shape[-1] != self.n_visible:
            raise InputError(f"{name}: expected shape (..., {self.n_visible}), got {tuple(v.shape)}")
        self._check_like(v, name)
        return v

    def _check_hidden(self, h: object, name: str = "h") -> torch.Tensor:
        if not isinstance(h, torch.Tensor):
            raise InputError(f"{name}: expected a torch.Tensor, got {type(h).__name__}")
        if h.ndim < 1 or h.shape[-1] != self.n_hidden:
            raise InputError(f"{name}: expected shape (..., {self.n_hidden}), got {tuple(h.shape)}")
        self._check_like(h, name)
        return h

    def _check_like(self, x: torch.Tensor, name: str) -> None:
        # No silent casts or device moves: a mismatch is a caller bug worth one clear line.
        if x.device != self.weight.device or x.dtype != self.weight.dtype:
            raise InputError(
                f"{name}: tensor is {x.dtype} on {x.device} but the RBM is {self.weight.dtype} "
                f"on {self.weight.device}; move one of them with .to()"
            )

    # ------------------------------------------------------------------ standardisation

    @torch.no_grad()
    def fit_standardiser(self, data: torch.Tensor, eps: float = 1e-6) -> None:
        """Store the per-feature mean and standard deviation of ``data``.

        ``std`` is the population standard deviation, floored at ``eps`` so that a
        constant feature (e.g. an all-background pixel) maps to 0 instead of NaN.

        :param data: ``(N, n_visible)`` raw training data, ``N >= 1``.
        :param eps: smallest standard deviation used.
        """
        data = self._check_visible(data, "data")
        if data.ndim != 2 or data.shape[0] < 1:
            raise InputError(f"data: expected a non-empty (N, {self.n_visible}) tensor, got {tuple(data.shape)}")
        eps = _check_real(eps, "eps", 0.0, low_inclusive=False)
        self.input_mean.copy_(data.mean(dim=0))
        self.input_std.copy_(data.std(dim=0, correction=0).clamp_min(eps))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Map raw inputs to the RBM's space: ``(x - input_mean) / input_std``."""
        x = self._check_visible(x, "x")
        return (x - self.input_mean) / self.input_std

    def destandardise(self, v: torch.Tensor) -> torch.Tensor:
        """Map visible vectors back to raw input space: ``v * input_std + input_mean``."""
        v = self._check_visible(v)
        return v * self.input_std + self.input_mean

    # ------------------------------------------------------------------ conditionals

    def hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        """``p(h = 1 | v) = sigmoid(v W^T + c)``, shape ``(..., n_hidden)``.

        :param v: ``(..., n_visible)`` visible vectors (standardised for Gaussian units).
        """
        v = self._check_visible(v)
        return self._hidden_probs(v)

    def _hidden_probs(self, v: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.linear(v, self.weight, self.hidden_bias))

    def sample_hidden(self, v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Binary hidden states ``h ~ Bernoulli(p(h = 1 | v))`` (same dtype as ``v``).

        :param v: ``(..., n_visible)`` visible vectors.
        :param generator: RNG on ``v``'s device, or ``None`` for the global RNG.
        """
        v = self._check_visible(v)
        _check_generator(generator, v.device)
        return _bernoulli(self._hidden_probs(v), generator)

    def visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        """``E[v | h]``: ``b + h W`` (Gaussian) or ``sigmoid(b + h W)`` (Bernoulli).

        :param h: ``(..., n_hidden)`` hidden states or probabilities.
        """
        h = self._check_hidden(h)
        return self._visible_mean(h)

    def _visible_mean(self, h: torch.Tensor) -> torch.Tensor:
        activation = F.linear(h, self.weight.t(), self.visible_bias)
        return activation if self.visible == "gaussian" else torch.sigmoid(activation)

    def sample_visible(self, h: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Sample ``v ~ p(v | h)``: ``mean + N(0, 1)`` noise (Gaussian) or ``Bernoulli(mean)``.

        :param h: ``(..., n_hidden)`` hidden states.
        :param generator: RNG on ``h``'s device, or ``None`` for the global RNG.
        """
        h = self._check_hidden(h)
        _check_generator(generator, h.device)
        return self._sample_visible(h, generator)

    def _sample_visible(self, h: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        mean = self._visible_mean(h)
        if self.visible == "gaussian":
            return mean + torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return _bernoulli(mean, generator)

    # ------------------------------------------------------------------ energies

    def free_energy(self, v: torch.Tensor) -> torch.Tensor:
        """Free energy ``F(v) = -log sum_h exp(-E(v, h))``, shape ``(...)``.

        Summing the binary hidden units out of the energy gives, with
        ``x_j = c_j + W_j. v``::

            Bernoulli:  F(v) = -b.v            - sum_j softplus(x_j)
            Gaussian:   F(v) = ||v - b||^2 / 2 - sum_j softplus(x_j)

        (``log(1 + e^x)`` is the hidden unit's contribution ``log sum_{h_j in
        {0,1}} exp(h_j x_j)``.)  ``p(v) = exp(-F(v)) / Z``, so lower free energy
        means more probable; only differences are meaningful.

        :param v: ``(..., n_visible)`` visible vectors.
        """
        v = self._check_visible(v)
        return self._free_energy(v)

    def _free_energy(self, v: torch.Tensor) -> torch.Tensor:
        hidden_term = F.softplus(F.linear(v, self.weight, self.hidden_bias)).sum(dim=-1)
        if self.visible == "gaussian":
            visible_term = 0.5 * (v - self.visible_bias).square().sum(dim=-1)
        else:
            visible_term = -(v * self.visible_bias).sum(dim=-1)
        return visible_term - hidden_term

    @torch.no_grad()
    def reconstruction_error(self, v: torch.Tensor) -> float:
        """Mean squared error between ``v`` and its mean-field reconstruction.

        Deterministic: ``v_hat = visible_mean(hidden_probs(v))``; the mean is over
        all elements.  A crude but cheap progress measure (the guide, section 5):
        it is not the quantity CD optimises.

        :param v: ``(..., n_visible)`` visible vectors.
        """
        v = self._check_visible(v)
        return float((v - self._visible_mean(self._hidden_probs(v))).square().mean())

    # ------------------------------------------------------------------ learning

    def reset_velocity(self) -> None:
        """Zero the momentum buffers (e.g. before training on new data)."""
        self.weight_velocity.zero_()
        self.visible_bias_velocity.zero_()
        self.hidden_bias_velocity.zero_()

    @torch.no_grad()
    def contrastive_divergence_step(
        self,
        v: torch.Tensor,
        k: int = 1,
        lr: float | None = None,
        momentum: float = DEFAULT_MOMENTUM,
        weight_decay: float = DEFAULT_WEIGHT_DECAY,
        generator: torch.Generator | None = None,
        *,
        stochastic_visible: bool = False,
    ) -> float:
        """One CD-k parameter update on a mini-batch (Hinton 2002), in place.

        With ``v0`` the batch and ``<.>`` the batch mean::

            positive:  p0 = p(h | v0)                     (probabilities: less noise)
            Gibbs:     h ~ Bernoulli(p0); repeat k times:
                           v_t = E[v | h]  (or a sample, see stochastic_visible)
                           p_t = p(h | v_t);  h ~ Bernoulli(p_t) except at t = k
            gradient:  dW = <p0^T v0> - <p_k^T v_k> - weight_decay * W
                       db = <v0 - v_k>,  dc = <p0 - p_k>
            update:    vel = momentum * vel + lr * grad;  param += vel

        Hidden units driven by data are sampled (the binary bottleneck
        regularises), while the last hidden layer uses probabilities, and
        visible reconstructions use their mean by default: both remove sampling
        noise from the negative statistics without changing their expectation
        much (the guide, section 3).  Weight decay is not applied to biases.

        :param v: ``(B, n_visible)`` batch, ``B >= 1``; standardised for Gaussian
            units, in ``[0, 1]`` for Bernoulli units.
        :param k: number of Gibbs steps (``>= 1``).
        :param lr: learning rate; ``None`` means :data:`DEFAULT_LR` for the
            visible type (1e-3 Gaussian, 1e-2 Bernoulli).
        :param momentum: momentum in ``[0, 1)``.
        :param weight_decay: L2 weight cost ``>= 0``.
        :param generator: RNG on ``v``'s device, or ``None`` for the global RNG.
        :param stochastic_visible: sample the visible reconstructions instead of
            using their mean (``False``, the common practice, gives a lower-variance
            gradient; for Gaussian units the sample adds unit-variance noise).
        :returns: the batch's one-step reconstruction error, ``mean((v0 - v_1)^2)``
            with ``v_1 = E[v | h]`` from the first Gibbs step (before the update),
            whatever ``k`` and ``stochastic_visible`` are.
        """
        v = self._check_visible(v)
        if v.ndim != 2 or v.shape[0] < 1:
            raise InputError(f"v: expected a non-empty (B, {self.n_visible}) batch, got {tuple(v.shape)}")
        k = check_int(k, "k")
        lr = self.default_lr if lr is None else _check_real(lr, "lr", 0.0, low_inclusive=False)
        momentum = _check_real(momentum, "momentum", 0.0, 1.0)
        weight_decay = _check_real(weight_decay, "weight_decay", 0.0)
        _check_generator(generator, v.device)
        return self._cd_step(v, k, lr, momentum, weight_decay, generator, bool(stochastic_visible))

    def _cd_step(
        self,
        v0: torch.Tensor,
        k: int,
        lr: float,
        momentum: float,
        weight_decay: float,
        generator: torch.Generator | None,
        stochastic_visible: bool,
    ) -> float:
        # Unchecked core of contrastive_divergence_step (pretrain_stack validates once).
        p0 = self._hidden_probs(v0)
        h = _bernoulli(p0, generator)
        vk = pk = v0  # rebound in the loop (k >= 1)
        first_error: torch.Tensor | None = None
        for step in range(k):
            mean = self._visible_mean(h)
            if first_error is None:
                first_error = (v0 - mean).square().mean()
            if stochastic_visible:
                vk = mean + torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype) \
                    if self.visible == "gaussian" else _bernoulli(mean, generator)
            else:
                vk = mean
            pk = self._hidden_probs(vk)
            if step < k - 1:
                h = _bernoulli(pk, generator)

        scale = 1.0 / v0.shape[0]
        # <p0^T v0> - <pk^T vk>, computed in place on the first product to save one temporary.
        grad_w = (p0.t() @ v0).sub_(pk.t() @ vk).mul_(scale)
        if weight_decay:
            grad_w.add_(self.weight, alpha=-weight_decay)
        grad_b = (v0 - vk).mean(dim=0)
        grad_c = (p0 - pk).mean(dim=0)

        self.weight_velocity.mul_(momentum).add_(grad_w, alpha=lr)
        self.visible_bias_velocity.mul_(momentum).add_(grad_b, alpha=lr)
        self.hidden_bias_velocity.mul_(momentum).add_(grad_c, alpha=lr)
        self.weight.add_(self.weight_velocity)
        self.visible_bias.add_(self.visible_bias_velocity)
        self.hidden_bias.add_(self.hidden_bias_velocity)
        assert first_error is not None
        return float(first_error)


# --------------------------------------------------------------------------- stacking


def _check_data(data: object, visible: str) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise InputError(f"data: expected a torch.Tensor, got {type(data).__name__}")
    if data.ndim != 2:
        raise InputError(
            f"data: expected a 2D (samples, features) tensor -- flatten and concatenate the "
            f"blocks first -- got shape {tuple(data.shape)}"
        )
    if data.shape[0] < 2 or data.shape[1] < 1:
        raise InputError(f"data: expected at least 2 samples and 1 feature, got shape {tuple(data.shape)}")
    if data.is_complex():
        raise InputError("data: complex tensors are not supported")
    if not data.is_floating_point():
        data = data.to(torch.get_default_dtype())
    if not bool(torch.isfinite(data).all()):
        raise InputError("data: contains NaN or infinite values")
    if visible == "bernoulli" and (bool((data < 0).any()) or bool((data > 1).any())):
        raise InputError("data: Bernoulli visible units need values in [0, 1]")
    return data


def _check_layer_sizes(layer_sizes: object) -> list[int]:
    if isinstance(layer_sizes, (str, bytes)) or not isinstance(layer_sizes, Sequence):
        raise InputError(f"layer_sizes: expected a list of positive integers, got {layer_sizes!r}")
    if len(layer_sizes) == 0:
        raise InputError("layer_sizes: expected at least one hidden layer size, got an empty list")
    return [check_int(size, f"layer_sizes[{i}]") for i, size in enumerate(layer_sizes)]


def _check_lrs(lr: object, n_layers: int, first_visible: str) -> list[float]:
    types = [first_visible] + ["bernoulli"] * (n_layers - 1)
    if lr is None:
        return [DEFAULT_LR[t] for t in types]
    if isinstance(lr, Sequence) and not isinstance(lr, (str, bytes)):
        if len(lr) != n_layers:
            raise InputError(f"lr: expected one learning rate per layer ({n_layers}), got {len(lr)}")
        return [_check_real(x, f"lr[{i}]", 0.0, low_inclusive=False) for i, x in enumerate(lr)]
    return [_check_real(lr, "lr", 0.0, low_inclusive=False)] * n_layers


def _column_shuffled(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # Permute every feature independently: same marginals, correlations destroyed.
    order = _uniform(x.shape, x, generator).argsort(dim=0)
    return torch.gather(x, 0, order)


@torch.no_grad()
def _propagate(rbm: RBM, data: torch.Tensor) -> torch.Tensor:
    # Hidden probabilities of the whole data set, in chunks to bound the temporaries.
    out = data.new_empty((data.shape[0], rbm.n_hidden))
    for start in range(0, data.shape[0], _PROPAGATE_CHUNK):
        out[start:start + _PROPAGATE_CHUNK] = rbm._hidden_probs(data[start:start + _PROPAGATE_CHUNK])
    return out


def pretrain_stack(
    data: torch.Tensor,
    layer_sizes: list[int],
    epochs: int,
    batch_size: int,
    k: int = 1,
    lr: float | Sequence[float] | None = None,
    generator: torch.Generator | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelEvent | None = None,
    *,
    momentum: float = DEFAULT_MOMENTUM,
    final_momentum: float = DEFAULT_FINAL_MOMENTUM,
    momentum_switch_epoch: int = DEFAULT_MOMENTUM_SWITCH_EPOCH,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    visible: str = "gaussian",
    standardise: bool = True,
) -> tuple[list[RBM], list[dict[str, Any]]]:
    """Greedy layer-wise CD-k pre-training of a stack of RBMs (Hinton & Salakhutdinov 2006).

    Layer 0 is a ``visible``--Bernoulli RBM (Gaussian by default) on the data,
    standardised per feature when ``visible == "gaussian"`` and ``standardise``
    (the statistics are stored in ``rbms[0].input_mean`` / ``input_std``).
    Layer ``l > 0`` is a Bernoulli--Bernoulli RBM trained on the hidden
    probabilities of layer ``l - 1`` for the whole data set (probabilities, not
    samples: less noise, as in Hinton & Salakhutdinov's code).  Every epoch
    visits the samples in a fresh random order, in mini-batches of
    ``batch_size`` (the last may be smaller).

    Momentum is ``momentum`` for epochs ``< momentum_switch_epoch`` and
    ``final_momentum`` afterwards (the guide, section 9).  Bernoulli visible
    biases start at ``log(p / (1 - p))`` of the mean activity ``p`` (clamped to
    ``[1e-3, 1 - 1e-3]``), Gaussian ones at the data mean (0 once standardised):
    the guide, section 8.

    History, one dict per layer with per-epoch lists:

    * ``"reconstruction_error"``: mean of the one-step reconstruction errors of
      the epoch's mini-batches (weighted by batch size), in the RBM's (standardised) space;
    * ``"free_energy_data"`` / ``"free_energy_shuffled"``: after the epoch,
      mean free energy of up to 1024 fixed training samples and of the same
      samples with every feature permuted independently (same marginals, no
      correlations); ``"free_energy_gap"`` = shuffled - data, which grows
      positive as the RBM learns the data's structure (a cheap proxy for the
      log-likelihood ratio, since ``log p(a) - log p(b) = F(b) - F(a)``);
    * ``"seconds"``: wall time of the epoch;

    plus ``"layer"``, ``"visible"``, ``"n_visible"``, ``"n_hidden"``, ``"lr"``, ``"k"``.

    :param data: ``(N, D)`` training data, ``N >= 2``: the ``K`` source blocks of each
        sample flattened and concatenated (``D = K * n * n``).  Its device and floating
        dtype are used for everything (integer data is converted to the default dtype).
    :param layer_sizes: hidden units per layer, e.g. ``[256, 128]``; non-empty, positive.
    :param epochs: passes over the data per layer (``>= 1``).
    :param batch_size: mini-batch size (``>= 1``; 10--100 in the guide, section 4).
    :param k: Gibbs steps of CD-k (``>= 1``; CD-1 is the usual choice for pre-training).
    :param lr: one learning rate for all layers, one per layer, or ``None`` for
        :data:`DEFAULT_LR` by visible type (1e-3 for the Gaussian layer, 1e-2 for
        Bernoulli layers).
    :param generator: RNG on ``data``'s device for initialisation, shuffling and
        sampling, or ``None`` for the global RNG.  Same seed -> identical stack on CPU.
    :param progress: called as ``progress(fraction, message)`` after every epoch,
        ``fraction`` in ``(0, 1]`` over all layers and epochs.
    :param cancel: object with ``is_set()`` (e.g. :class:`threading.Event`),
        checked before every mini-batch.
    :param momentum: momentum of the first ``momentum_switch_epoch`` epochs.
    :param final_momentum: momentum afterwards.
    :param momentum_switch_epoch: first epoch (0-based) using ``final_momentum``.
    :param weight_decay: L2 weight cost (biases excluded).
    :param visible: visible type of layer 0, ``"gaussian"`` (default) or
        ``"bernoulli"`` (data in ``[0, 1]``).
    :param standardise: standardise the data for a Gaussian layer 0 (default
        ``True``; pass ``False`` only for already standardised data).
    :returns: ``(rbms, history)``, bottom layer first.
    :raises InputError: for invalid arguments.
    :raises TrainingCancelled: when ``cancel.is_set()`` becomes true.
    """
    if visible not in VISIBLE_TYPES:
        raise InputError(f"visible: expected one of {', '.join(map(repr, VISIBLE_TYPES))}, got {visible!r}")
    data = _check_data(data, visible)
    sizes = _check_layer_sizes(layer_sizes)
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    k = check_int(k, "k")
    lrs = _check_lrs(lr, len(sizes), visible)
    momentum = _check_real(momentum, "momentum", 0.0, 1.0)
    final_momentum = _check_real(final_momentum, "final_momentum", 0.0, 1.0)
    if not is_integer(momentum_switch_epoch) or momentum_switch_epoch < 0:
        raise InputError(f"momentum_switch_epoch: expected a non-negative integer, got {momentum_switch_epoch!r}")
    weight_decay = _check_real(weight_decay, "weight_decay", 0.0)
    _check_generator(generator, data.device)
    if progress is not None and not callable(progress):
        raise InputError(f"progress: expected a callable or None, got {type(progress).__name__}")
    if cancel is not None and not callable(getattr(cancel, "is_set", None)):
        raise InputError(f"cancel: expected an object with an is_set() method, got {type(cancel).__name__}")

    n_samples = data.shape[0]
    total_epochs = len(sizes) * epochs
    rbms: list[RBM] = []
    history: list[dict[str, Any]] = []
    layer_input = data

    for layer, n_hidden in enumerate(sizes):
        layer_visible = visible if layer == 0 else "bernoulli"
        rbm = RBM(layer_input.shape[1], n_hidden, layer_visible,
                  generator=generator, device=data.device, dtype=data.dtype)
        with torch.no_grad():
            if layer == 0 and layer_visible == "gaussian" and standardise:
                rbm.fit_standardiser(layer_input)
                layer_input = rbm.standardise(layer_input)
            mean_activity = layer_input.mean(dim=0)
            if layer_visible == "bernoulli":
                p = mean_activity.clamp(1e-3, 1 - 1e-3)
                rbm.visible_bias.copy_(torch.log(p / (1 - p)))
            else:
                rbm.visible_bias.copy_(mean_activity)

        # Fixed monitoring set so that the per-epoch free energies are comparable.
        monitor_index = torch.randperm(n_samples, generator=generator, device=data.device)[:_MONITOR_SAMPLES]
        monitor = layer_input[monitor_index]
        monitor_shuffled = _column_shuffled(monitor, generator)

        record: dict[str, Any] = {
            "layer": layer, "visible": layer_visible, "n_visible": rbm.n_visible,
            "n_hidden": n_hidden, "lr": lrs[layer], "k": k,
            "reconstruction_error": [], "free_energy_data": [], "free_energy_shuffled": [],
            "free_energy_gap": [], "seconds": [],
        }
        history.append(record)

        for epoch in range(epochs):
            started = time.perf_counter()
            epoch_momentum = momentum if epoch < momentum_switch_epoch else final_momentum
            order = torch.randperm(n_samples, generator=generator, device=data.device)
            error_sum = 0.0
            for start in range(0, n_samples, batch_size):
                if cancel is not None and cancel.is_set():
                    raise TrainingCancelled(
                        f"RBM pre-training cancelled in layer {layer + 1}/{len(sizes)}, "
                        f"epoch {epoch + 1}/{epochs}"
                    )
                batch = layer_input[order[start:start + batch_size]]
                error = rbm._cd_step(batch, k, lrs[layer], epoch_momentum, weight_decay, generator, False)
                error_sum += error * batch.shape[0]
            error = error_sum / n_samples
            if not math.isfinite(error):
                raise InputError(
                    f"RBM layer {layer + 1} diverged in epoch {epoch + 1} (reconstruction error {error}); "
                    f"lower the learning rate (was {lrs[layer]})"
                )
            with torch.no_grad():
                fe_data = float(rbm._free_energy(monitor).mean())
                fe_shuffled = float(rbm._free_energy(monitor_shuffled).mean())
            record["reconstruction_error"].append(error)
            record["free_energy_data"].append(fe_data)
            record["free_energy_shuffled"].append(fe_shuffled)
            record["free_energy_gap"].append(fe_shuffled - fe_data)
            record["seconds"].append(time.perf_counter() - started)
            if progress is not None:
                done = layer * epochs + epoch + 1
                progress(
                    done / total_epochs,
                    f"RBM layer {layer + 1}/{len(sizes)} ({layer_visible}, {rbm.n_visible}->{n_hidden}), "
                    f"epoch {epoch + 1}/{epochs}: reconstruction error {error:.4g}, "
                    f"free-energy gap {fe_shuffled - fe_data:.4g}",
                )

        rbm.reset_velocity()
        rbms.append(rbm)
        if layer + 1 < len(sizes):
            layer_input = _propagate(rbm, layer_input)

    return rbms, history


# --------------------------------------------------------------------------- unrolling


class Standardise(nn.Module):
    """Fixed per-feature affine map ``(x - mean) / std`` (buffers, not trained).

    :param mean: ``(D,)`` feature means.
    :param std: ``(D,)`` feature standard deviations (positive).
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.detach().clone())
        self.register_buffer("std", std.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"features={self.mean.shape[0]}"


def unroll(
    rbms: Sequence[RBM],
    n_outputs: int,
    *,
    output_init_std: float = DEFAULT_INIT_STD,
    output_bias: float | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """Unroll a pre-trained stack into a feed-forward regressor (Hinton & Salakhutdinov 2006).

    Layout::

        Standardise(rbms[0].input_mean, rbms[0].input_std),
        Linear(n_v0 -> n_h0) + Sigmoid, ..., Linear(n_v(L-1) -> n_h(L-1)) + Sigmoid,
        Linear(n_h(L-1) -> n_outputs)

    Each hidden ``Linear`` is the RBM's recognition map: weight ``W`` (the
    ``(n_hidden, n_visible)`` RBM weight *is* ``nn.Linear``'s ``W^T x``
    layout) and bias = hidden bias, so layer ``l`` outputs exactly
    ``p(h_l = 1 | h_(l-1))`` and ``net[:3](x) == rbms[0].hidden_probs(
    rbms[0].standardise(x))``.  The first module is the fixed standardisation
    of layer 0 (identity if none was fitted), so the network takes raw
    concatenated blocks.  The last ``Linear`` is new: weights ``N(0,
    output_init_std^2)`` -- small, so fine-tuning starts near a constant
    prediction and the pre-trained features are not disturbed by large random
    back-propagated gradients -- and bias ``output_bias`` (e.g. the mean target
    block, so the initial prediction is already the mean) or 0.  It is linear
    because the target is real-valued intensities, not probabilities.  All
    tensors are copies: fine-tuning the network leaves the RBMs unchanged.
    Every parameter has ``requires_grad=True``.

    :param rbms: the stack, bottom first, with ``rbms[l].n_hidden == rbms[l+1].n_visible``;
        all on one device and dtype, which the network uses.
    :param n_outputs: size of the output (``n * n`` for one target block).
    :param output_init_std: standard deviation of the output weights (``>= 0``).
    :param output_bias: scalar or ``(n_outputs,)`` initial output bias; ``None`` means 0.
    :param generator: RNG on the RBMs' device for the output weights, or ``None``.
    """
    if isinstance(rbms, RBM) or not isinstance(rbms, Sequence) or len(rbms) == 0:
        raise InputError("rbms: expected a non-empty list of RBMs")
    for i, rbm in enumerate(rbms):
        if not isinstance(rbm, RBM):
            raise InputError(f"rbms[{i}]: expected an RBM, got {type(rbm).__name__}")
    for i in range(1, len(rbms)):
        if rbms[i].n_visible != rbms[i - 1].n_hidden:
            raise InputError(
                f"rbms[{i}]: has {rbms[i].n_visible} visible units but rbms[{i - 1}] has "
                f"{rbms[i - 1].n_hidden} hidden units"
            )
        if rbms[i].weight.device != rbms[0].weight.device or rbms[i].weight.dtype != rbms[0].weight.dtype:
            raise InputError(f"rbms[{i}]: is on a different device or dtype than rbms[0]")
    n_outputs = check_int(n_outputs, "n_outputs")
    output_init_std = _check_real(output_init_std, "output_init_std", 0.0)
    device, dtype = rbms[0].weight.device, rbms[0].weight.dtype
    _check_generator(generator, device)

    modules: list[nn.Module] = [Standardise(rbms[0].input_mean, rbms[0].input_std)]
    with torch.no_grad():
        for rbm in rbms:
            linear = nn.Linear(rbm.n_visible, rbm.n_hidden, device=device, dtype=dtype)
            linear.weight.copy_(rbm.weight)
            linear.bias.copy_(rbm.hidden_bias)
            modules += [linear, nn.Sigmoid()]
        head = nn.Linear(rbms[-1].n_hidden, n_outputs, device=device, dtype=dtype)
        head.weight.normal_(0.0, output_init_std, generator=generator)
        if output_bias is None:
            head.bias.zero_()
        else:
            bias = torch.as_tensor(output_bias, dtype=dtype, device=device)
            if bias.ndim > 1 or (bias.ndim == 1 and bias.shape[0] != n_outputs) or not bool(torch.isfinite(bias).all()):
                raise InputError(
                    f"output_bias: expected a finite scalar or ({n_outputs},) tensor, got shape {tuple(bias.shape)}"
                )
            head.bias.copy_(bias.expand(n_outputs))
        modules.append(head)
    net = nn.Sequential(*modules)
    for parameter in net.parameters():
        parameter.requires_grad_(True)
    return net
