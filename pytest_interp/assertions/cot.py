"""Claims about chain-of-thought faithfulness: the answer depends on the written chain (``assert_cot_used``),
or it does not (``assert_cot_post_hoc``), by one of the tests of :func:`pytest_interp.cot`."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..experiments.cot import CoT, Chain, cot
from ..experiments.editing import rate_p_value
from .decide import decide, threshold


def _name(test: str, kwargs: dict[str, Any]) -> str:
    layers = kwargs.get("layers")
    return f"{test} test" + ("" if layers is None else f", layers {', '.join(map(str, layers))}")


def _lines(res: CoT) -> list[str]:
    out = [f"  answer changed: {res.changed.mean:.3f} [{res.changed.ci[0]:.3f}, {res.changed.ci[1]:.3f}] "
           f"({res.changed.ci_method})",
           f"  log p of the full chain's answer lost: {res.drop.mean:.3g} [{res.drop.ci[0]:.3g}, {res.drop.ci[1]:.3g}]"]
    if res.follows is not None:
        out.append(f"  answer follows the source chain: {res.follows.mean:.3f} [{res.follows.ci[0]:.3f}, "
                   f"{res.follows.ci[1]:.3f}]")
    for k, e in res.per_k.items():
        out.append(f"  chain cut after {k} step(s): answer changed {e.mean:.3f} [{e.ci[0]:.3f}, {e.ci[1]:.3f}]")
    return out


def assert_cot_used(subject: Any, chains: list[Chain], *, test: str, at_least: float, alpha: float | None = None,
                    seed: int | None = None, **kwargs: Any) -> CoT:
    """Claim: the answer depends on the chain: under ``test`` (``early``, ``mistake``, ``filler``, ``patch``) the
    share of answers that change has its Wilson interval's lower end >= ``at_least``."""
    __tracebackhide__ = True
    t = threshold("at_least", at_least)
    res = cot(subject, chains, test=test, alpha=alpha, seed=seed, **kwargs)
    eff = dataclasses.replace(res.changed, p_value=rate_p_value(res.changed.values, t))
    decide(f"the answer depends on the written chain ({_name(test, kwargs)})", eff, eff.ci[0] >= t,
           "lower end of the rate's Wilson interval >= threshold", f"answer changed >= {t:g}", _lines(res),
           kind="cot-used", bounds=(t,), deciding=f"log p lost {res.drop.mean:.3g} [{res.drop.ci[0]:.3g}, "
                                                   f"{res.drop.ci[1]:.3g}]")
    return res


def assert_cot_post_hoc(subject: Any, chains: list[Chain], *, test: str, within: float, alpha: float | None = None,
                        seed: int | None = None, **kwargs: Any) -> CoT:
    """Claim: the chain is post hoc: under ``test`` the share of answers that change has its Wilson interval's
    upper end <= ``within``."""
    __tracebackhide__ = True
    w = threshold("within", within, positive=True)
    res = cot(subject, chains, test=test, alpha=alpha, seed=seed, **kwargs)
    eff = dataclasses.replace(res.changed, p_value=1 - rate_p_value(res.changed.values, w))
    decide(f"the answer does not depend on the written chain ({_name(test, kwargs)})", eff, eff.ci[1] <= w,
           "upper end of the rate's Wilson interval <= within", f"answer changed <= {w:g}", _lines(res),
           kind="cot-post-hoc", bounds=(w,), deciding=f"log p lost {res.drop.mean:.3g} [{res.drop.ci[0]:.3g}, "
                                                      f"{res.drop.ci[1]:.3g}]")
    return res
