"""The claims report: terminal table, versioned JSON and a self-contained HTML page (inline SVG, no CDN)."""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata as md
from typing import Any

from .registry import claim_key

SCHEMA = "pytest-interp/report"
VERSION = 1


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("pytest-interp", "torch", "transformers", "numpy", "pytest"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def build(records: list[dict[str, Any]], controls: dict[str, Any], drift: list[dict[str, Any]] | None,
          grids: list[dict[str, Any]] | None = None) -> dict:
    """The JSON report (schema ``pytest-interp/report`` version 1)."""
    models: dict[str, Any] = {}
    claims = []
    drift_by_key = {row["key"]: row for row in drift or []}
    for r in sorted(records, key=claim_key):
        m = dict(r["model"])
        models[m["fingerprint"]] = m
        c = {k: v for k, v in r.items() if k not in ("model", "index")}
        c.update(key=claim_key(r), model=m["fingerprint"], drift=drift_by_key.get(claim_key(r)))
        c.setdefault("registry", "no registry")
        claims.append(c)
    held = sum(c["passed"] for c in claims)
    summary = {"claims": len(claims), "held": held, "rejected": len(claims) - held}
    if drift is not None:
        summary["drift_exceeded"] = sum(row["exceeded"] for row in drift)
    created = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {"schema": SCHEMA, "version": VERSION, "created": created, "controls": controls, "models": models,
            "claims": claims, "grids": list(grids or []), "summary": summary}


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def table(records: list[dict[str, Any]], show_registry: bool) -> list[tuple[str, ...]]:
    lvl = round(100 * (1 - records[0]["alpha"]), 2)
    head = ["verdict", "test", "claim", "sites", "intervention", "metric", "effect", f"{lvl:g}% CI", "threshold",
            "n"]
    if show_registry:
        head.append("registry")
    rows = [tuple(head)]
    for r in sorted(records, key=claim_key):
        verdict = _verdict(r)
        row = [verdict, r["test"], r["claim"], ", ".join(r["sites"]), r["intervention"], r["metric"],
               fmt(r["effect"]), f"[{fmt(r['ci'][0])}, {fmt(r['ci'][1])}]", r["threshold"], str(r["n"])]
        if show_registry:
            row.append(r.get("registry", ""))
        rows.append(tuple(row))
    return rows


def _margin(r: dict[str, Any]) -> float:
    """How far a claim's interval clears its bounds (negative: it does not); the worst case has the least."""
    lo, hi = r["ci"]
    bounds = [b for b in r.get("bounds", []) if b is not None]
    if len(bounds) == 2:
        return min(lo - bounds[0], bounds[1] - hi)
    if bounds:
        return bounds[0] - hi if str(r.get("rule", "")).startswith("upper") else lo - bounds[0]
    return 0.0


def folded(records: list[dict[str, Any]]) -> list[tuple[dict[str, Any], int]]:
    """One entry per claim, in the order the claims ran: records of the same claim (hypothesis examples) folded
    into their worst case (a rejected one first, else the one whose interval clears its bounds by the least),
    with their count."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(claim_key(r), []).append(r)
    out = []
    for group in groups.values():  # in the order the claims ran
        worst = min(group, key=lambda r: (bool(r["passed"]), _margin(r)))
        out.append((worst, len(group)))
    return out


def _verdict(r: dict[str, Any]) -> str:
    if r.get("outcome") == "xfailed":
        return "xfail"
    if r.get("outcome") == "xpassed":
        return "XPASS"
    return "held" if r["passed"] else "REJECTED"


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width=max(width, 20), break_long_words=True, break_on_hyphens=False) or [""]


def compact(records: list[dict[str, Any]], width: int = 110) -> list[str]:
    """The terminal claims table, at most ``width`` columns: per claim the verdict and the claim (wrapped), then
    its effect and CI against the threshold and n, the numbers that decided a compound claim, and for a
    documented false claim (xfail) its reason."""
    lvl = round(100 * (1 - records[0]["alpha"]), 2)
    pad = 10
    text = max(width - pad, 30)
    lines = []
    for r, count in folded(records):
        claim = _wrap(r["claim"], text)
        lines.append(f"{_verdict(r):<{pad}}{claim[0]}")
        lines += [" " * pad + c for c in claim[1:]]
        folds = f"; {count} examples, the worst shown" if count > 1 else ""
        numbers = (f"{fmt(r['effect'])} [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}] ({lvl:g}% CI) vs {r['threshold']}; "
                   f"n={r['n']}{folds}")
        extra = [numbers]
        if r.get("deciding"):
            extra.append(f"decided by: {r['deciding']}")
        if r.get("outcome") in ("xfailed", "xpassed") and r.get("xfail_reason"):
            extra.append(f"expected to fail: {r['xfail_reason']}")
        for item in extra:
            lines += [" " * pad + c for c in _wrap(item, text)]
    return lines


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


# HTML ---------------------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:middle}
th{background:#f4f4f4}.held{color:#176b2c;font-weight:600}.rejected{color:#b00020;font-weight:600}
.mono{font-family:ui-monospace,monospace;font-size:12px}.small{color:#666;font-size:12px}
"""


def effect_svg(r: dict[str, Any], width: int = 260, height: int = 34) -> str:
    """A bar for one claim: the effect as a dot, its CI as a whisker, thresholds dashed, zero grey."""
    lo, hi, eff = r["ci"][0], r["ci"][1], r["effect"]
    bounds = [b for b in r.get("bounds", []) if b is not None]
    xs = [lo, hi, eff, 0.0, *bounds]
    a, b = min(xs), max(xs)
    pad = (b - a) * 0.08 or 1.0
    a, b = a - pad, b + pad

    def x(v: float) -> float:
        return 8 + (v - a) / (b - a) * (width - 16)

    colour = "#176b2c" if r["passed"] else "#b00020"
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
             f'aria-label="effect {fmt(eff)} CI {fmt(lo)} to {fmt(hi)}">',
             f'<line x1="{x(0):.1f}" y1="4" x2="{x(0):.1f}" y2="{height - 4}" stroke="#bbb"/>']
    for t in bounds:
        parts.append(f'<line x1="{x(t):.1f}" y1="2" x2="{x(t):.1f}" y2="{height - 2}" stroke="#555" '
                     f'stroke-dasharray="3,2"/>')
    mid = height / 2
    parts += [f'<line x1="{x(lo):.1f}" y1="{mid}" x2="{x(hi):.1f}" y2="{mid}" stroke="{colour}" stroke-width="3"/>',
              f'<line x1="{x(lo):.1f}" y1="{mid - 6}" x2="{x(lo):.1f}" y2="{mid + 6}" stroke="{colour}"/>',
              f'<line x1="{x(hi):.1f}" y1="{mid - 6}" x2="{x(hi):.1f}" y2="{mid + 6}" stroke="{colour}"/>',
              f'<circle cx="{x(eff):.1f}" cy="{mid}" r="4" fill="{colour}"/></svg>']
    return "".join(parts)


def heatmap_svg(values: list[list[float | None]], rows: list[str], cols: list[str], title: str) -> str:
    """A heatmap (white = 0, red = positive, blue = negative) with labelled rows and columns."""
    cell, left, top = 44, 50, 30
    flat = [abs(v) for row in values for v in row if v is not None]
    scale = max(flat) if flat else 1.0
    w, h = left + cell * len(cols) + 10, top + cell * len(rows) + 10
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img" '
           f'aria-label="{html.escape(title)}">']
    for j, c in enumerate(cols):
        out.append(f'<text x="{left + j * cell + cell / 2}" y="{top - 6}" font-size="10" text-anchor="middle">'
                   f'{html.escape(c)}</text>')
    for i, rlab in enumerate(rows):
        out.append(f'<text x="{left - 6}" y="{top + i * cell + cell * 0.65}" font-size="10" text-anchor="end">'
                   f'{html.escape(rlab)}</text>')
        for j, v in enumerate(values[i]):
            if v is None:
                fill = "#eee"
            else:
                k = min(1.0, abs(v) / scale) if scale else 0.0
                shade = int(255 * (1 - k))
                fill = f"rgb(255,{shade},{shade})" if v >= 0 else f"rgb({shade},{shade},255)"
            tip = "n/a" if v is None else f"{v:.3g}"
            out.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell - 1}" height="{cell - 1}" '
                       f'fill="{fill}"><title>{html.escape(rlab)} x {html.escape(cols[j])}: {tip}</title></rect>')
            if v is not None and len(cols) <= 24:
                out.append(f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell * 0.6}" '
                           f'font-size="10" text-anchor="middle">{v:.2g}</text>')
    out.append("</svg>")
    return "".join(out)


def render_html(report: dict[str, Any]) -> str:
    """A single self-contained HTML page of the report: summary, claims table with effect bars, heatmaps."""
    e = html.escape
    s = report["summary"]
    c = report["controls"]
    lvl = round(100 * (1 - c["alpha"]), 2)
    rows = []
    for r in report["claims"]:
        cls = "held" if r["passed"] else "rejected"
        verdict = ("held" if r["passed"] else "rejected") + (" (xfail)" if r["outcome"] == "xfailed" else "")
        test = r["test"]
        rows.append(
            f'<tr class="claim"><td class="{cls}">{verdict}</td>'
            f'<td>{e(r["claim"])}<br><span class="mono small" title="{e(test)}">{e(test.split("/")[-1])}</span>'
            + (f'<br><span class="small">decided by: {e(r["deciding"])}</span>' if r.get("deciding") else "")
            + (f'<br><span class="small">expected to fail: {e(r["xfail_reason"])}</span>'
               if r.get("xfail_reason") else "") + '</td>'
            f'<td>{effect_svg(r)}</td><td>{fmt(r["effect"])}</td><td>[{fmt(r["ci"][0])}, {fmt(r["ci"][1])}]</td>'
            f'<td>{e(r["threshold"])}</td><td>{r["n"]}</td><td>{e(r["intervention"])}</td><td>{e(r["metric"])}</td>'
            f'<td>{e(r["registry"])}</td></tr>')
    models = "".join(
        f'<tr><td class="mono">{e(fp[:16])}</td><td>{e(m.get("name") or "")}</td><td>{e(m["architecture"])}</td>'
        f'<td>{m["layers"]}</td><td>{m["heads"]}</td><td>{m.get("experts") or "-"}</td>'
        f'<td>{m["vocab_size"]}</td><td>{e(m["dtype"])}</td><td>{e(m["attn_implementation"])}</td></tr>'
        for fp, m in report["models"].items())
    maps = "".join(f'<h2>{e(g["title"])}</h2>' + heatmap_svg(g["values"], g["rows"], g["cols"], g["title"])
                   for g in report["grids"])
    versions_ = ", ".join(f"{k} {v}" for k, v in c["versions"].items() if v)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pytest-interp claims report</title>
<style>{_CSS}</style></head><body>
<h1>Interpretability claims</h1>
<p id="summary">{s["claims"]} claims: {s["held"]} held, {s["rejected"]} rejected. alpha={c["alpha"]} ({lvl:g}% CIs),
seed={c["seed"]}, {c["n_boot"]} bootstrap resamples. A claim holds only when its confidence interval clears its
threshold (dashed line; grey line: zero).</p>
<table id="claims"><thead><tr><th>verdict</th><th>claim / test</th><th>effect and {lvl:g}% CI</th><th>effect</th>
<th>{lvl:g}% CI</th><th>threshold</th><th>n</th><th>intervention</th><th>metric</th><th>registry</th>
</tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Models</h2>
<table id="models"><thead><tr><th>fingerprint</th><th>name</th><th>architecture</th><th>layers</th><th>heads</th>
<th>experts</th><th>vocab</th><th>dtype</th><th>attention</th></tr></thead><tbody>{models}</tbody></table>
{maps}
<p class="small">{e(versions_)}; device {e(c["device"])}; created {e(report["created"])}</p>
</body></html>
"""
