"""Training of the FOV probes' fold models (:mod:`ocbench.tasks.fov_probe`), without autograd.

Holds what turns a group of fold plans into trained weights: the stacked parameters (every fold's
weights and biases as views of one flat tensor, so AdamW updates one tensor per step), the
per-fold random streams (initial weights, each epoch's draws, dropout masks), the forward pass,
the output gradient of the loss (BCE per class, or softmax cross-entropy for single-label data),
the hand-written backward pass over buffers allocated once, and the per-fold predictions of a
trained model. The protocol itself (which rows, which standardisation, what is scored) is the
task's, in :mod:`ocbench.tasks.fov_probe`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


@dataclass
class _FoldPlan:
    """One fold model to train: its rows, draw weights, standardizer and random seed.

    ``standardizer``: anything with ``apply(features) -> float32 features`` (fitted on ``train``);
    ``weights``: the draw weight of each training row (None: a plain shuffle each epoch)."""

    fold: int
    train: np.ndarray
    val: np.ndarray
    weights: np.ndarray | None
    standardizer: Any
    seed: int
    steps_per_epoch: int


def _dropout_bits(p: float) -> tuple[Any, int, int, float]:
    """How to draw dropout masks from random integers: (dtype, bits, keep threshold, 1/keep).

    A unit is kept iff its random ``bits``-bit signed integer is >= the threshold, so the keep
    probability is ``1 - round(p * 2**bits) / 2**bits``: exact with 8 bits for p = 0.5 (half the
    random numbers of 16 bits), within 2**-17 otherwise.
    """
    import torch

    bits = 8 if float(p * 256).is_integer() else 16
    dropped = round(p * 2**bits)
    dtype = torch.int8 if bits == 8 else torch.int16
    return dtype, bits, dropped - 2 ** (bits - 1), 2**bits / (2**bits - dropped)


def _matmul_per_fold(dev) -> bool:
    """On CPU one matmul per fold: a batched matmul over 5 folds splits them 3/2 over 2 cores (-15%)."""
    return dev.type == "cpu"


def _stacked_matmul(dev, n_folds: int) -> Callable[..., None]:
    """``matmul_(out, a, b, beta, alpha)``: ``out[g] = beta * out[g] + alpha * a[g] @ b[g]`` for every fold ``g``."""
    if _matmul_per_fold(dev):
        def matmul_(out, a, b, beta, alpha):
            for g in range(n_folds):
                out[g].addmm_(a[g], b[g], beta=beta, alpha=alpha)

    else:
        def matmul_(out, a, b, beta, alpha):
            out.baddbmm_(a, b, beta=beta, alpha=alpha)
    return matmul_


@dataclass
class _StackedParams:
    """Every fold's weights ``(folds, d_in, d_out)`` and biases ``(folds, 1, d_out)``, per layer, as
    views of ``flat``; their gradients are views of ``flat.grad``."""

    flat: Any
    weights: list
    biases: list
    grad_w: list
    grad_b: list


def _init_params(dims: list[int], gens: list, dev) -> _StackedParams:
    """nn.Linear's default initialisation of every layer, each fold from its own generator."""
    import torch

    G = len(gens)
    shapes = [s for d_in, d_out in zip(dims[:-1], dims[1:]) for s in ((G, d_in, d_out), (G, 1, d_out))]
    flat = torch.empty(sum(math.prod(s) for s in shapes), device=dev)
    flat.grad = torch.zeros_like(flat)  # filled in place by the backward pass
    views, grads, at = [], [], 0
    for shape in shapes:
        size = math.prod(shape)
        views.append(flat[at : at + size].view(shape))
        grads.append(flat.grad[at : at + size].view(shape))
        at += size
    params = _StackedParams(flat, views[0::2], views[1::2], grads[0::2], grads[1::2])
    for w, b in zip(params.weights, params.biases):
        bound = 1.0 / math.sqrt(w.shape[1])  # nn.Linear's default init
        for g in range(G):
            w[g].uniform_(-bound, bound, generator=gens[g])
            b[g].uniform_(-bound, bound, generator=gens[g])
    return params


def _adamw(cfg: Any, flat, dev):
    """AdamW over the flat parameter tensor (decay on every parameter, as ``AdamW(model.parameters())``)."""
    import torch

    opt_kwargs: dict[str, Any] = dict(lr=cfg.effective_lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    if dev.type in ("cpu", "cuda"):
        opt_kwargs["fused"] = True  # one kernel instead of a dozen elementwise passes
    return torch.optim.AdamW([flat], **opt_kwargs)


class _StackedProbe:
    """The folds of one group trained together: data on the device, parameters, optimizer and
    every buffer of a step, allocated once (a step with ``rows`` rows per fold uses the first
    ``folds * rows`` rows of each flat buffer)."""

    def __init__(self, cfg: Any, group: list[_FoldPlan], x: np.ndarray, y: np.ndarray, dev, single: bool):
        import torch

        self.cfg, self.dev, self.single = cfg, dev, single
        self.G, self.B, self.C = len(group), cfg.batch_size, y.shape[1]
        self.hidden, p_drop = cfg.head()
        self.dims = [x.shape[1], *self.hidden, self.C]
        self.n_layers = len(self.dims) - 1
        self.steps = group[0].steps_per_epoch
        self.sizes = [p.train.size for p in group]

        # One tensor of every fold's standardized training rows; batches index into it.
        self.z_train = torch.from_numpy(np.concatenate([p.standardizer.apply(x[p.train]) for p in group])).to(dev)
        self.y_train = torch.from_numpy(np.concatenate([y[p.train] for p in group])).to(dev)
        self.gens = [torch.Generator(device=dev).manual_seed(p.seed) for p in group]
        self.draw_weights = [torch.from_numpy(p.weights).to(dev) if p.weights is not None else None for p in group]
        self.params = _init_params(self.dims, self.gens, dev)
        self.opt = _adamw(cfg, self.params.flat, dev)
        self.matmul_ = _stacked_matmul(dev, self.G)
        self._allocate_buffers(p_drop)
        self._plan_epoch_rows(np.cumsum([0, *self.sizes[:-1]]))

    def _allocate_buffers(self, p_drop: float) -> None:
        import torch

        G, B, dev, hidden = self.G, self.B, self.dev, self.hidden
        self.inputs = torch.empty(G * B, self.dims[0], device=dev)
        self.targets = torch.empty(G * B, self.C, device=dev)
        self.acts = [torch.empty(G * B, d, device=dev) for d in self.dims[1:]]
        self.deltas = [torch.empty(G * B, d, device=dev) for d in self.dims[1:]]
        self.keep = [torch.empty(G * B, h, device=dev) for h in hidden]  # dropout masks, 0.0 or 1.0
        self.mask_dtype, mask_bits, self.keep_threshold, keep_scale = _dropout_bits(p_drop)
        self.use_dropout = p_drop > 0 and bool(hidden)
        # dropout's 1/keep, per layer input
        self.in_scale = [1.0] + [keep_scale if self.use_dropout else 1.0] * len(hidden)
        # Random integers for the dropout masks, drawn as int64 words: one row per fold and layer,
        # always a full batch's worth so a fold's random stream does not depend on its neighbours.
        per_word = 64 // mask_bits
        self.mask_words = [torch.empty(G, math.ceil(B * h / per_word), dtype=torch.int64, device=dev) for h in hidden]

    def _plan_epoch_rows(self, starts: np.ndarray) -> None:
        """Each epoch's row order per fold, and the loss weight of each row of its last batch."""
        import torch

        G, B, dev, sizes, steps = self.G, self.B, self.dev, self.sizes, self.steps
        self.epoch_idx = torch.empty(G, steps * B, dtype=torch.int64, device=dev)
        self.offsets = torch.tensor(starts, dtype=torch.int64, device=dev)[:, None]
        last = steps * B - B  # first position of the epoch's last batch
        # The last batch is cut to the longest fold's remainder: rows past it would weigh 0 in every
        # fold and only cost matmul time (4% of an epoch at OpenCell's size).
        self.last_rows = max(n - last for n in sizes)
        last_valid = torch.arange(self.last_rows, device=dev)[None, :] < torch.tensor([n - last for n in sizes], device=dev)[:, None]
        # BCE is a mean over rows and classes, cross-entropy (single-label) over rows only
        self.per_row = 1 if self.single else self.C
        self.last_weight = (last_valid.float() / last_valid.sum(1, keepdim=True) / self.per_row)[:, :, None]
        self.epoch_loss = torch.zeros(G, device=dev)

    def train_epoch(self, epoch: int) -> None:
        """One epoch: cosine learning rate, each fold's draws, every optimizer step."""
        cfg, B, steps = self.cfg, self.B, self.steps
        lr = cfg.effective_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / cfg.epochs))
        for param_group in self.opt.param_groups:
            param_group["lr"] = lr
        self._draw_epoch_rows()
        self.epoch_loss.zero_()
        # The loss is only shown (every 10th epoch) and returned (last epoch): compute it then only.
        track_loss = epoch % 10 == 0 or epoch == cfg.epochs - 1
        for step in range(steps):
            idx = self.epoch_idx[:, step * B : step * B + (self.last_rows if step == steps - 1 else B)]
            rows = idx.shape[1]
            # per fold, the mean loss over its rows (and classes, for BCE); padding rows weigh 0
            row_weight = self.last_weight if step == steps - 1 else 1.0 / (rows * self.per_row)
            self._step(idx, row_weight, track_loss)

    def _draw_epoch_rows(self) -> None:
        """Each fold's rows of the epoch: weighted draws with replacement, or a shuffle."""
        import torch

        self.epoch_idx.copy_(self.offsets.expand_as(self.epoch_idx))  # padding rows point at a valid row, weight 0
        for g, n in enumerate(self.sizes):
            if self.draw_weights[g] is not None:
                draws = torch.multinomial(self.draw_weights[g], n, replacement=True, generator=self.gens[g])
            else:
                draws = torch.randperm(n, generator=self.gens[g], device=self.dev)
            self.epoch_idx[g, :n] += draws

    def _step(self, idx, row_weight, track_loss: bool) -> None:
        import torch

        G, C = self.G, self.C
        rows = idx.shape[1]
        positions = idx.reshape(-1)
        x_b = self.inputs[: G * rows]
        torch.index_select(self.z_train, 0, positions, out=x_b)
        y_b = self.targets[: G * rows]
        torch.index_select(self.y_train, 0, positions, out=y_b)
        x_b, y_b = x_b.view(G, rows, -1), y_b.view(G, rows, C)
        layer_in = self._forward(x_b, rows)
        delta = self._output_gradient(layer_in[-1], y_b, row_weight, track_loss)
        self._backward(layer_in, delta, rows)
        self.opt.step()

    def _forward(self, x_b, rows: int) -> list:
        """Every layer's input and the logits: a = relu(h @ W + b) * keep, the 1/keep scale folded
        into the next matmul."""
        import torch

        G, params = self.G, self.params
        layer_in = [x_b]
        for layer in range(self.n_layers):
            a = self.acts[layer][: G * rows].view(G, rows, -1)
            a.copy_(params.biases[layer].expand_as(a))
            self.matmul_(a, layer_in[-1], params.weights[layer], beta=1.0, alpha=self.in_scale[layer])
            if layer < self.n_layers - 1:
                a.clamp_min_(0.0)
                if self.use_dropout:
                    for g in range(G):
                        self.mask_words[layer][g].random_(-(2**63), None, generator=self.gens[g])
                    bits = self.mask_words[layer].view(self.mask_dtype)[:, : rows * self.hidden[layer]].view(G, rows, -1)
                    mask = self.keep[layer][: G * rows].view(G, rows, -1)
                    torch.ge(bits, self.keep_threshold, out=mask)  # (masked_fill_ is 10x slower on CPU)
                    a.mul_(mask)
            layer_in.append(a)
        return layer_in

    def _output_gradient(self, logits, y_b, row_weight, track_loss: bool):
        """d loss / d logits (and the epoch's loss when tracked): per fold, the mean BCE over its
        rows and classes, or the mean cross-entropy over its rows (single-label)."""
        import torch
        import torch.nn.functional as F

        rows = logits.shape[1]
        delta = self.deltas[-1][: self.G * rows].view(self.G, rows, self.C)
        if self.single:
            if track_loss:
                with torch.no_grad():
                    ce = -(y_b * torch.log_softmax(logits, dim=2)).sum(2, keepdim=True)
                    self.epoch_loss += (ce * row_weight).sum((1, 2))
            delta.copy_(torch.softmax(logits, dim=2))
        else:
            if track_loss:
                with torch.no_grad():
                    bce = F.binary_cross_entropy_with_logits(logits, y_b, reduction="none")
                    self.epoch_loss += (bce * row_weight).sum((1, 2))
            torch.sigmoid(logits, out=delta)
        return delta.sub_(y_b).mul_(row_weight)

    def _backward(self, layer_in: list, delta, rows: int) -> None:
        """Every layer's weight and bias gradients, written into ``flat.grad``."""
        import torch

        params = self.params
        for layer in reversed(range(self.n_layers)):
            h_in = layer_in[layer]
            self.matmul_(params.grad_w[layer], h_in.transpose(1, 2), delta, beta=0.0, alpha=self.in_scale[layer])
            torch.sum(delta, dim=1, keepdim=True, out=params.grad_b[layer])
            if layer > 0:
                below = self.deltas[layer - 1][: self.G * rows].view(self.G, rows, -1)
                self.matmul_(below, delta, params.weights[layer].transpose(1, 2), beta=0.0, alpha=self.in_scale[layer])
                # through relu and dropout: the gradient passes where the unit's output is > 0
                torch.ops.aten.threshold_backward.grad_input(below, h_in, 0.0, grad_input=below)
                delta = below


def _train_group(cfg: Any, group: list[_FoldPlan], x: np.ndarray, y: np.ndarray, dev, bar, single: bool = False):
    """Train the folds of ``group`` as one stacked model; return [(W, b) per layer], final losses.
    ``cfg``: the probe's settings (:class:`~ocbench.tasks.fov_probe.FovProbe`); ``single``: softmax
    cross-entropy over the classes (one label per row) instead of a BCE per class.

    The backward pass is written out (an MLP's is four lines) so that every activation, gradient
    and mask lives in a buffer allocated once: autograd's fresh tensors per op cost more than the
    elementwise work itself on small CPUs. ``tests/test_tasks_probe.py`` checks it against autograd.
    """
    probe = _StackedProbe(cfg, group, x, y, dev, single)
    for epoch in range(cfg.epochs):
        probe.train_epoch(epoch)
        bar.update(1)
        if epoch % 10 == 0 or epoch == cfg.epochs - 1:
            bar.set_postfix(loss=f"{float(probe.epoch_loss.mean()) / probe.steps:.4f}")
    final = (probe.epoch_loss / probe.steps).tolist()
    return list(zip(probe.params.weights, probe.params.biases)), final


def _predict(cfg: Any, params, features: np.ndarray, dev, single: bool = False) -> np.ndarray:
    """Binary predictions of one fold's model (no dropout): the classes whose sigmoid output
    reaches the threshold, or (``single``) the one-hot row of the largest logit."""
    import torch

    with torch.inference_mode():
        h = torch.from_numpy(features).to(dev)
        for layer, (w, b) in enumerate(params):
            h = torch.addmm(b[0], h, w)
            if layer < len(params) - 1:
                h = torch.relu(h)
        if single:
            return np.eye(h.shape[1], dtype=bool)[h.argmax(dim=1).cpu().numpy()]
        return (torch.sigmoid(h) >= cfg.threshold).cpu().numpy()
