"""Sparse autoencoders read from the SAELens on-disk format, and their features as sites.

A directory holds ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``,
``b_enc [d_sae]``, ``b_dec [d_in]``; ``threshold [d_sae]`` for JumpReLU). The config is SAELens 6's (the hook in
``metadata.hook_name``) or an earlier flat one (``hook_name``, or ``hook_point`` before that). The hook is a
TransformerLens name, mapped to this package's sites:

=================================  ===================
``blocks.L.hook_resid_pre``        ``pi.resid(L)``
``blocks.L.hook_resid_post``       ``pi.resid(L + 1)``
``blocks.L.hook_mlp_out``          ``pi.mlp(L)``
``blocks.L.hook_attn_out``         ``pi.attn(L)``
``blocks.L.attn.hook_z`` + head h  ``pi.head(L, h)``
=================================  ===================

Nothing is unpickled: weights are read with safetensors. A feature's activation is the SAE's encoding of the
site's activation; an intervention on features changes only their contribution to the site,
``x + (a' - a) @ W_dec[features]``, so the SAE's reconstruction error stays in place and an intervention that
changes nothing leaves the run exactly as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ..core.errors import InterpError
from ..core.sites import Site, attn, head, mlp, resid

ARCHITECTURES = ("standard", "jumprelu", "topk")
_HOOK = re.compile(r"^blocks\.(\d+)\.(hook_resid_pre|hook_resid_post|hook_mlp_out|hook_attn_out|attn\.hook_z)$")


def hook_site(hook_name: str, head_index: int | None = None) -> Site:
    """The site of a TransformerLens hook name (see the module docstring), or an InterpError."""
    m = _HOOK.match(str(hook_name))
    if m is None:
        raise InterpError(f"cannot map the SAE's hook {hook_name!r} to a site",
                          expected="blocks.L.hook_resid_pre / hook_resid_post / hook_mlp_out / hook_attn_out, or "
                                   "blocks.L.attn.hook_z with a head index", seen=repr(hook_name),
                          fix="use an SAE trained on one of those hooks, or pass site= to pi.load_sae")
    layer, hook = int(m.group(1)), m.group(2)
    if hook == "attn.hook_z":
        if head_index is None:
            raise InterpError(f"the SAE on {hook_name} reads every head's z at once", expected="an SAE on one head "
                              "(hook_head_index set)", seen="hook_head_index = None",
                              fix="use a per-head SAE, or one on hook_attn_out")
        return head(layer, int(head_index))
    return {"hook_resid_pre": resid(layer), "hook_resid_post": resid(layer + 1), "hook_mlp_out": mlp(layer),
            "hook_attn_out": attn(layer)}[hook]


class SAE:
    """A sparse autoencoder on one site. ``sae.feature(i)`` and ``sae.features([i, j])`` are sites.

    Attributes:
        site: where it reads (from its hook, or ``site=`` at load).
        d_in, d_sae, architecture: its sizes and encoder (``standard``, ``jumprelu``, ``topk``).
        hook_name: the TransformerLens hook it was trained on.
        fingerprint: sha256 of its config and weights (cache keys and reports).
    """

    def __init__(self, path: Path, cfg: dict[str, Any], weights: dict[str, torch.Tensor], site: Site,
                 fingerprint: str) -> None:
        self.path, self.cfg, self.site, self.fingerprint = path, cfg, site, fingerprint
        meta = cfg.get("metadata") or {}
        self.hook_name = str(meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point"))
        self.architecture = str(cfg.get("architecture", "standard"))
        self.W_enc, self.W_dec = weights["W_enc"], weights["W_dec"]
        self.b_enc, self.b_dec = weights["b_enc"], weights["b_dec"]
        self.threshold = weights.get("threshold")
        self.d_in, self.d_sae = int(self.W_enc.shape[0]), int(self.W_enc.shape[1])
        self.k = int(cfg["k"]) if self.architecture == "topk" else None
        self.apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", False))
        self._on: dict[Any, dict[str, torch.Tensor]] = {}

    def _weights(self, device: Any) -> dict[str, torch.Tensor]:
        key = str(device)
        if key not in self._on:
            names = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
            self._on[key] = {n: getattr(self, n).to(device) for n in names if getattr(self, n) is not None}
        return self._on[key]

    def encode(self, x: torch.Tensor, features: list[int] | None = None) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` (float32) of site activations ``x [..., d_in]``; with
        ``features``, only theirs ``[..., len(features)]`` (a top-k SAE still ranks every feature)."""
        w = self._weights(x.device)
        x = x.float()
        if self.apply_b_dec_to_input:
            x = x - w["b_dec"]
        if features is not None and self.architecture != "topk":
            pre = x @ w["W_enc"][:, features] + w["b_enc"][features]
            if self.architecture == "jumprelu":
                return pre * (pre > w["threshold"][features])
            return pre.relu()
        pre = x @ w["W_enc"] + w["b_enc"]
        if self.architecture == "jumprelu":
            acts = pre * (pre > w["threshold"])
        elif self.architecture == "topk":
            top = pre.topk(self.k or 1, dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        else:
            acts = pre.relu()
        return acts if features is None else acts[..., features]

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """The reconstruction ``acts @ W_dec + b_dec`` (float32)."""
        w = self._weights(acts.device)
        return acts.float() @ w["W_dec"] + w["b_dec"]

    def contribution(self, delta: torch.Tensor, features: tuple[int, ...]) -> torch.Tensor:
        """What a change ``delta [..., k]`` of the activations of ``features`` adds to the site."""
        w = self._weights(delta.device)
        return delta.float() @ w["W_dec"][list(features)]

    def feature(self, i: int) -> Site:
        """Feature ``i`` as a site (restrict positions with ``.at(...)``)."""
        return self.features([i])

    def features(self, indices: Any = None) -> Site:
        """A set of features as one site (all of them when ``indices`` is None)."""
        try:
            idx = tuple(range(self.d_sae)) if indices is None else tuple(int(i) for i in indices)
        except (TypeError, ValueError):
            raise InterpError("feature indices must be ints", expected="e.g. sae.features([3, 17])",
                              seen=repr(indices), fix="pass a list of feature numbers") from None
        bad = [i for i in idx if not 0 <= i < self.d_sae]
        if not idx or bad:
            raise InterpError("feature index out of range" if bad else "no features given",
                              expected=f"indices in 0..{self.d_sae - 1}", seen=str(bad[:5] if bad else "[]"),
                              fix=f"this SAE has {self.d_sae} features, counted from 0")
        return replace(self.site, kind="feature", index=idx[0] if len(idx) == 1 else None, host=self.site,
                       sae=self, features=idx)

    def __repr__(self) -> str:
        return (f"<SAE {self.architecture} {self.d_in} -> {self.d_sae} on {self.site} ({self.hook_name}), "
                f"{self.path}>")


def load_sae(path: str | Path, *, site: Site | None = None) -> SAE:
    """Read an SAE saved in the SAELens format (``cfg.json`` + ``sae_weights.safetensors``).

    Args:
        path: the SAE's directory.
        site: where it reads, when its hook name cannot say (or to override it).
    """
    from safetensors.torch import load_file

    d = Path(path)
    cfg_path, w_path = d / "cfg.json", d / "sae_weights.safetensors"
    for f in (cfg_path, w_path):
        if not f.is_file():
            raise InterpError(f"no {f.name} in {d}", expected="an SAELens directory: cfg.json + "
                              "sae_weights.safetensors", seen=", ".join(sorted(p.name for p in d.iterdir()))
                              if d.is_dir() else "no such directory",
                              fix="point pi.load_sae at the directory SAELens saved (convert other formats with "
                                  "scripts/convert_sae.py)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise InterpError(f"{cfg_path} is not valid JSON", expected="a JSON object", seen=str(exc),
                          fix="re-save the SAE") from None
    arch = str(cfg.get("architecture", "standard"))
    if arch not in ARCHITECTURES:
        raise InterpError(f"SAE architecture {arch!r} is not supported", expected=" / ".join(ARCHITECTURES),
                          seen=arch, fix="use a standard, JumpReLU or top-k SAE")
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, "none"):
        raise InterpError(f"SAE activation normalisation {norm!r} is not supported", expected="'none'",
                          seen=repr(norm), fix="fold the normalisation into the weights before saving")
    raw = w_path.read_bytes()
    weights = {k: v.float() for k, v in load_file(str(w_path)).items()}
    if arch == "jumprelu" and "threshold" not in weights and "log_threshold" in weights:
        weights["threshold"] = weights["log_threshold"].exp()
    need = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    missing = [k for k in need if k not in weights]
    if missing:
        raise InterpError(f"the SAE's weights lack {', '.join(missing)}", expected=", ".join(need),
                          seen=", ".join(sorted(weights)), fix="save every tensor of the SAE")
    d_in, d_sae = weights["W_enc"].shape if weights["W_enc"].dim() == 2 else (0, 0)
    shapes = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
              "threshold": (d_sae,)}
    for k in need:
        if tuple(weights[k].shape) != shapes[k] or not d_in:
            raise InterpError(f"the SAE's {k} has the wrong shape", expected=f"{shapes[k]} (W_enc is [d_in, d_sae])",
                              seen=str(tuple(weights[k].shape)), fix="save W_enc as [d_in, d_sae]")
        if not bool(torch.isfinite(weights[k]).all()):
            raise InterpError(f"the SAE's {k} has NaN or inf values", expected="finite weights", seen=f"{k}",
                              fix="retrain or re-save the SAE")
    for key, want in (("d_in", d_in), ("d_sae", d_sae)):
        if key in cfg and int(cfg[key]) != want:
            raise InterpError(f"the SAE's cfg.json says {key} = {cfg[key]}, its weights {want}",
                              expected="a config that matches the weights", seen=f"{key} {cfg[key]} vs {want}",
                              fix="re-save the SAE")
    if arch == "topk" and not isinstance(cfg.get("k"), int):
        raise InterpError("a top-k SAE needs k in cfg.json", expected="an int k", seen=repr(cfg.get("k")),
                          fix="add k to cfg.json")
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    head_index = meta.get("hook_head_index", cfg.get("hook_head_index", cfg.get("hook_point_head_index")))
    if site is None:
        if hook is None:
            raise InterpError("the SAE's config names no hook", expected="metadata.hook_name (SAELens 6), "
                              "hook_name or hook_point", seen=", ".join(sorted(cfg)), fix="pass site= to pi.load_sae")
        site = hook_site(hook, head_index)
    elif not isinstance(site, Site) or site.kind in ("feature", "expert", "router"):
        raise InterpError("an SAE reads a head, attn, mlp or resid site", expected="e.g. site=pi.resid(1)",
                          seen=repr(site), fix="pass one of pi.head / attn / mlp / resid")
    fingerprint = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode() + b"\0" + raw).hexdigest()
    return SAE(d, cfg, weights, site.unrestricted, fingerprint)


def check_feature_site(subject: Any, site: Site) -> None:
    """InterpError unless the feature site's SAE fits its host site in ``subject``."""
    sae = site.sae
    ad = subject.adapter
    host = site.host_site
    width = ad.head_dim if host.kind in ("head", "cross_head") else ad.hidden_size
    if sae.d_in != width:
        raise InterpError(f"the SAE does not fit {host}", expected=f"d_in = {width} (the width of "
                          f"{host} in this model)", seen=f"d_in = {sae.d_in} ({sae.hook_name})",
                          fix="use an SAE trained on this model's site")
