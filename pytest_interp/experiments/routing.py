"""The routing log: where a MoE router sent each token, per layer (run-cached), and routing frequency tables.

In transformers' MoE blocks (Mixtral, Qwen2-MoE, OLMoE) the router ``mlp.gate`` returns
``(logits [N, E], weights [N, k], index [N, k])`` for the N = batch x seq tokens. Routing frequency says which
experts were read from, not which ones the predictions depend on: that is an ablation (:mod:`..engine.experts`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core import records as _records
from ..core.cache import current, tensor_digest
from ..core.batch import require_equal_lengths
from ..core.errors import InterpError
from ..core.settings import settings
from ..engine.runner import routes
from ..model.checks import as_subject, check_layer
from ..model.subject import Subject

class Routing:
    """Where the router sent each token, per MoE layer: ``index[layer]`` ``[batch, seq, k]`` (the chosen experts),
    ``weights[layer]`` (their weights) and ``probs[layer]`` ``[batch, seq, E]`` (the router's distribution).

    Routing frequency says which experts were *read from*; whether the predictions *depend* on an expert is a
    separate question, answered by ablating it (``pi.assert_expert_necessary``).
    """

    def __init__(self, index: dict[int, torch.Tensor], weights: dict[int, torch.Tensor],
                 probs: dict[int, torch.Tensor], n_experts: int) -> None:
        self.index, self.weights, self.probs, self.n_experts = index, weights, probs, n_experts

    @property
    def layers(self) -> list[int]:
        return sorted(self.index)

    def _layer(self, layer: int) -> int:
        if layer not in self.index:
            raise InterpError(f"layer {layer} is not in this routing log", expected=f"one of {self.layers}",
                              seen=str(layer), fix="log that layer with pi.routing(..., layers=[...])")
        return layer

    def chosen(self, layer: int, expert: int) -> torch.Tensor:
        """Bool ``[batch, seq]``: which tokens have ``expert`` in their top-k at ``layer``."""
        if not 0 <= expert < self.n_experts:
            raise InterpError(f"expert {expert} is out of range", expected=f"0..{self.n_experts - 1}",
                              seen=str(expert), fix="count experts from 0")
        return (self.index[self._layer(layer)] == expert).any(-1)

    def frequency(self, layer: int, positions: Any = None) -> np.ndarray:
        """Per expert, the fraction of tokens (where ``positions``, a bool ``[batch, seq]`` mask, is True) that
        have it in their top-k. Sums to k over experts."""
        idx = self.index[self._layer(layer)]
        mask = _positions(positions, idx.shape[:2])
        hits = torch.stack([(idx == e).any(-1) for e in range(self.n_experts)], -1)[mask]
        return hits.float().mean(0).numpy() if hits.numel() else np.zeros(self.n_experts)

    def per_example(self, layer: int, expert: int, positions: Any = None) -> np.ndarray:
        """Per example, the fraction of its tokens (within ``positions``) routed to ``expert``."""
        hit = self.chosen(layer, expert).float()
        mask = _positions(positions, hit.shape).float()
        count = mask.sum(1)
        if bool((count == 0).any()):
            raise InterpError("the position mask selects no token in some example", expected="at least one "
                              "token per example", seen=f"{int((count == 0).sum())} empty example(s)",
                              fix="widen the mask or drop those examples")
        return ((hit * mask).sum(1) / count).numpy()

    def table(self, classes: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows ``{layer, expert, all, <class>...}``: routing frequency overall and per position class (named bool
        ``[batch, seq]`` masks)."""
        rows = []
        for layer in self.layers:
            freq = {"all": self.frequency(layer)}
            for name, m in (classes or {}).items():
                freq[name] = self.frequency(layer, m)
            for e in range(self.n_experts):
                rows.append({"layer": layer, "expert": e, **{k: float(v[e]) for k, v in freq.items()}})
        return rows

    def grid(self) -> tuple[np.ndarray, list[str], list[str]]:
        """Routing frequency as ``(values [layers, experts], row labels, column labels)``."""
        values = np.stack([self.frequency(layer) for layer in self.layers])
        return values, [f"layer {lay}" for lay in self.layers], [f"expert {e}" for e in range(self.n_experts)]

    def __repr__(self) -> str:
        return f"<Routing layers={self.layers} experts={self.n_experts}>"


def _positions(positions: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if positions is None:
        return torch.ones(shape, dtype=torch.bool)
    m = torch.as_tensor(getattr(positions, "mask", positions)).to("cpu")
    if m.dtype != torch.bool:
        raise InterpError("positions must be a bool mask", expected="a bool tensor [batch, seq]", seen=str(m.dtype),
                          fix="build it with comparisons, e.g. tokens == id")
    if m.dim() == 1:
        m = m[None].expand(shape[0], -1)
    if tuple(m.shape) != tuple(shape):
        raise InterpError("positions mask has the wrong shape", expected=f"[batch, seq] = {list(shape)}",
                          seen=str(list(m.shape)), fix="build the mask for the same inputs")
    return m


def routing(subject: Subject, inputs: Any, *, layers: Any = None, record: bool = True) -> Routing:
    """Log the router's choices on ``inputs`` at every MoE layer (or ``layers``). Inside a pytest session the
    routing frequency is added to the HTML report as a heatmap (``record=False`` to skip)."""
    subject = as_subject(subject)
    layers_l = list(range(subject.n_layers)) if layers is None else [int(x) for x in layers]
    for layer in layers_l:
        check_layer(subject, layer)
    tokens = subject.tokens(inputs)
    require_equal_lengths(tokens, "the routing log")  # its fractions count every position

    def parts() -> dict[str, Any]:
        return {"model": subject.fingerprint, "kind": "routing log", "tokens": tensor_digest(tokens),
                "layers": layers_l, "dtype": subject.dtype_key, "device": str(subject.device),
                "attn": subject.attn_implementation, "batch_size": settings().batch_size}

    def compute() -> torch.Tensor:
        got = routes(subject, tokens, layers_l)
        # per layer [batch, seq, k + k + E]: chosen experts, their weights, the router's distribution
        return torch.stack([torch.cat([torch.cat([r.index for r in rs]).double(),
                                       torch.cat([r.weights for r in rs]).double(),
                                       torch.softmax(torch.cat([r.logits for r in rs]).float(), -1).double()], -1)
                            for rs in got.values()]).cpu()

    log = current().scores(parts, compute, rows=len(layers_l))
    n_exp = int(subject.n_experts or 0)
    k = (log.shape[-1] - n_exp) // 2
    index = {lay: log[i, ..., :k].long() for i, lay in enumerate(layers_l)}
    weights = {lay: log[i, ..., k:2 * k].float() for i, lay in enumerate(layers_l)}
    probs = {lay: log[i, ..., 2 * k:].float() for i, lay in enumerate(layers_l)}
    result = Routing(index, weights, probs, int(n_exp))
    if record:
        values, row_labels, col_labels = result.grid()
        _records.add_grid({"title": "routing frequency (fraction of tokens with the expert in their top-k)",
                           "rows": row_labels, "cols": col_labels, "values": values.tolist()})
    return result


