"""Attention Diversification Loss (ADL): penalise image tokens that all point the same way.

For the image-token hidden states h of one block, shape (B, N, C),

    h_bar = (1/N) sum_j h_j                                  (mean token, per image)
    ADL(h) = (1/(B N)) sum_b sum_i cos(h_{b,i}, h_bar_b)        in [-1, 1]

and over a set L of chosen blocks L_ADL = (1/|L|) sum_{l in L} ADL(h^l). Minimising it spreads tokens away from
their mean direction (less token similarity -> fewer periodic high-frequency artifacts).

The tap (``loss.adl_tap``) says which tensor h is:

- ``block``: the block OUTPUT's image tokens, with the mean-token cosine above (the default);
- ``attention``: the block's attention output (before its gate and residual), same cosine;
- ``centred``: the block output with every channel centred over the image's tokens, c_i = h_i - h_bar. The mean
  token of centred tokens is 0, so the similarity is the mean squared pairwise cosine instead,
  ``mean_{i != j} cos^2(c_i, c_j)`` (1 when all tokens lie on one line, ~1/C for C-dim isotropic tokens; computed
  from the smaller of the two Gram matrices, O(N C min(N, C))). A shared per-channel offset, e.g. the few very large
  channels that every FLUX token carries (they make the ``block`` cosine ~0.9 even with random weights), drops out.

Decisions (not published): the default tap is ``block`` (``centred`` is the one that diversifies the tokens
themselves when its weight matters: docs/training.md has the measured comparison); ``block`` and ``attention``
compare with the mean token (O(N C), unlike pairwise O(N^2 C)); the default blocks are the last two single blocks,
``"single:-2,-1"``.

diffusers (0.35+, checked on 0.42) ``FluxTransformerBlock`` and ``FluxSingleTransformerBlock`` both take
(hidden_states, encoder_hidden_states) separately and return the tuple (encoder_hidden_states, hidden_states):
the image tokens are element 1. Older single blocks took and returned one tensor of concatenated
[text, image] tokens; then the first ``text_len`` tokens are cut off, with ``text_len`` read from the model's
``encoder_hidden_states`` argument.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KINDS = {"double": "transformer_blocks", "single": "single_transformer_blocks"}
TAPS = ("block", "attention", "centred")


def adl_loss(hidden: Tensor, eps: float = 1e-8) -> Tensor:
    """ADL(h) = mean_{b,i} cos(h_{b,i}, mean_j h_{b,j}) for hidden states (B, N, C); returns a scalar."""
    if hidden.ndim != 3:
        raise ValueError(f"expected (B, N, C) hidden states, got shape {tuple(hidden.shape)}")
    h = hidden.float()
    return F.cosine_similarity(h, h.mean(dim=1, keepdim=True), dim=-1, eps=eps).mean()


def centred_adl_loss(hidden: Tensor, eps: float = 1e-8) -> Tensor:
    """mean_{b, i != j} cos^2(c_{b,i}, c_{b,j}) of the tokens centred per channel, c = h - mean_j h_j, for hidden
    states (B, N, C); a scalar in [0, 1], unchanged by adding one per-channel offset to every token."""
    if hidden.ndim != 3 or hidden.shape[1] < 2:
        raise ValueError(f"expected (B, N >= 2, C) hidden states, got shape {tuple(hidden.shape)}")
    h = hidden.float()
    c = h - h.mean(dim=1, keepdim=True)
    u = c / c.norm(dim=-1, keepdim=True).clamp_min(eps)
    n = u.shape[1]
    gram = u @ u.transpose(1, 2) if n <= u.shape[2] else u.transpose(1, 2) @ u  # same Frobenius norm
    diagonal = u.pow(2).sum(-1).pow(2).sum(-1)  # cos^2(c_i, c_i): 1 (0 for a token equal to the mean)
    return ((gram.pow(2).sum((1, 2)) - diagonal) / (n * (n - 1))).mean()


def parse_block_spec(spec: str | Sequence[str]) -> list[tuple[str, int | None]]:
    """Parse block specs into (kind, index) pairs; index None means every block of that kind.

    Grammar: ``"<kind>:<i>[,<j>...]"`` with kind ``double`` (``transformer_blocks``) or ``single``
    (``single_transformer_blocks``), Python indices (negative count from the end) or ``all``; several specs
    are joined with ``;`` or given as a list. Example: ``"double:18;single:-2,-1"``.
    """
    parts = [spec] if isinstance(spec, str) else list(spec)
    out: list[tuple[str, int | None]] = []
    for part in (p.strip() for s in parts for p in s.split(";")):
        if not part:
            continue
        kind, sep, idx = part.partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in KINDS:
            raise ValueError(f"bad block spec {part!r}: expected 'double:<i,...>' or 'single:<i,...>'")
        for tok in (t.strip() for t in idx.split(",")):
            if tok == "all":
                out.append((kind, None))
            else:
                try:
                    out.append((kind, int(tok)))
                except ValueError:
                    raise ValueError(f"bad block index {tok!r} in spec {part!r}") from None
    if not out:
        raise ValueError(f"empty block spec {spec!r}")
    return out


def find_flux_core(model: nn.Module) -> nn.Module:
    """The module that owns ``transformer_blocks`` and ``single_transformer_blocks`` (looks inside wrappers)."""
    for module in (model, *(m for _, m in model.named_modules())):
        if all(isinstance(getattr(module, a, None), nn.ModuleList) for a in KINDS.values()):
            return module
    raise ValueError(
        "no module with transformer_blocks and single_transformer_blocks (not a FLUX transformer?)"
    )


def resolve_blocks(model: nn.Module, spec: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """(label, block) pairs for ``spec``; labels are canonical like ``"single:37"``, without duplicates."""
    core = find_flux_core(model)
    chosen: dict[str, nn.Module] = {}
    for kind, idx in parse_block_spec(spec):
        blocks = getattr(core, KINDS[kind])
        n = len(blocks)
        indices = range(n) if idx is None else [idx]
        for i in indices:
            if not -n <= i < n:
                raise IndexError(f"{kind} block {i} out of range: the model has {n} {KINDS[kind]}")
            chosen.setdefault(f"{kind}:{i % n}", blocks[i])
    return list(chosen.items())


def image_tokens(output: Any, text_len: int | None) -> Tensor:
    """Image-token hidden states from a FLUX block's output.

    Tuple output (encoder_hidden_states, hidden_states) -> element 1; a single tensor of concatenated
    [text, image] tokens -> ``output[:, text_len:]``.
    """
    if isinstance(output, tuple | list):
        return output[1]
    if isinstance(output, Tensor):
        if text_len is None:
            raise RuntimeError("block returned concatenated tokens but the text length is unknown")
        return output[:, text_len:]
    raise TypeError(f"unexpected block output type {type(output).__name__}")


def attention_image_tokens(output: Any, text_len: int | None) -> Tensor:
    """Image-token attention output of a FLUX block's ``attn``: a double block's attention returns (image, text),
    a single block's one tensor of concatenated [text, image] tokens."""
    if isinstance(output, tuple | list):
        return output[0]
    return image_tokens(output, text_len)


class ADLCollector:
    """Collect image-token hidden states of chosen FLUX blocks with forward hooks and compute L_ADL.

    Usage::

        with ADLCollector(transformer, "single:-2,-1") as adl:
            pred = transformer(...)
            loss = loss_main + w_adl * adl.loss()

    ``tap``: ``block`` (block outputs), ``attention`` (the blocks' attention outputs) or ``centred`` (block outputs
    centred per channel, :func:`centred_adl_loss`). Each top-level forward of the model clears what the previous
    one stored, so :meth:`loss` always refers to the most recent forward (set ``enabled = False`` around forwards
    that must not count, e.g. an FTD branch).
    Hooks also fire when gradient checkpointing recomputes a block during backward; that only refreshes the
    stored tensors after the loss was taken.
    """

    def __init__(
        self, model: nn.Module, blocks: str | Sequence[str] = "single:-2,-1", tap: str = "block"
    ) -> None:
        if tap not in TAPS:
            raise ValueError(f"ADL tap: expected one of {', '.join(TAPS)}, got {tap!r}")
        self.model = model
        self.core = find_flux_core(model)
        self.blocks = resolve_blocks(model, blocks)
        self.tap = tap
        self.enabled = True
        self.hidden: dict[str, Tensor] = {}
        self._text_len: int | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    @property
    def labels(self) -> list[str]:
        """Canonical labels of the hooked blocks, e.g. ``['single:0', 'single:1']``."""
        return [label for label, _ in self.blocks]

    def _pre_forward(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if not self.enabled:
            return
        self.hidden.clear()
        ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        self._text_len = None if ehs is None else int(ehs.shape[1])

    def _make_hook(self, label: str):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.enabled:
                tokens = attention_image_tokens if self.tap == "attention" else image_tokens
                self.hidden[label] = tokens(output, self._text_len)

        return hook

    def attach(self) -> ADLCollector:
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        self._handles.append(self.core.register_forward_pre_hook(self._pre_forward, with_kwargs=True))
        for label, block in self.blocks:
            tapped = block.attn if self.tap == "attention" else block
            self._handles.append(tapped.register_forward_hook(self._make_hook(label)))
        return self

    def remove(self) -> None:
        """Remove the hooks and drop the stored tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.hidden.clear()

    def clear(self) -> None:
        """Drop the stored hidden states."""
        self.hidden.clear()

    def __enter__(self) -> ADLCollector:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.remove()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Context in which forwards are not collected (and do not clear the stored states)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def loss(self) -> Tensor:
        """L_ADL = mean over the collected blocks of :func:`adl_loss` (:func:`centred_adl_loss` for the
        ``centred`` tap); raises if nothing was collected."""
        if not self.hidden:
            raise RuntimeError("no hidden states collected: run a forward pass inside the collector first")
        loss = centred_adl_loss if self.tap == "centred" else adl_loss
        return torch.stack([loss(h) for h in self.hidden.values()]).mean()
