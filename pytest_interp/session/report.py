"""The claims report: terminal table, versioned JSON and a self-contained HTML page (inline SVG, no CDN)."""

from __future__ import annotations

import datetime as _dt
import html
import importlib.metadata as md
from typing import Any

from .registry import claim_key

SCHEMA = "pytest-interp/report"
VERSION = 2  # 2: per-example values, xfail reasons and deciding numbers in each claim


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
    """The JSON report (schema ``pytest-interp/report`` version 2; a version-1 report still validates)."""
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
    used = sorted({c["decoding"] for c in claims if c.get("decoding")})
    controls = dict(controls, decoding={"settings": used, "claims": sum(bool(c.get("decoding")) for c in claims)}
                    if used else None)
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
    """One entry per claim, by test id: records of the same claim (hypothesis examples) folded
    into their worst case (a rejected one first, else the one whose interval clears its bounds by the least),
    with their count."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(claim_key(r), []).append(r)
    out = []
    for key in sorted(groups):  # by test id: the same order under xdist as in a serial run
        group = groups[key]
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


def compact(records: list[dict[str, Any]], width: int = 110, show_registry: bool = False) -> list[str]:
    """The terminal claims table, at most ``width`` columns: per claim the verdict and the claim (wrapped), then
    its effect and CI against the threshold and n, the numbers that decided a compound claim, and for a
    documented false claim (xfail) its reason."""
    pad = 10
    text = max(width - pad, 30)
    lines = []
    for r, count in folded(records):
        claim = _wrap(r["claim"], text)
        lines.append(f"{_verdict(r):<{pad}}{claim[0]}")
        lines += [" " * pad + c for c in claim[1:]]
        folds = f"; {count} examples, the worst shown" if count > 1 else ""
        lvl = round(100 * (1 - r["alpha"]), 2)
        registry = f"; {r.get('registry', 'unregistered')}" if show_registry else ""
        numbers = (f"{fmt(r['effect'])} [{fmt(r['ci'][0])}, {fmt(r['ci'][1])}] ({lvl:g}% CI) vs {r['threshold']}; "
                   f"n={r['n']}{folds}{registry}")
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
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;min-width:0}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left;
vertical-align:top;overflow-wrap:anywhere}
th{background:#f4f4f4}.held{color:#176b2c;font-weight:600}.rejected{color:#b00020;font-weight:600}
.mono{font-family:ui-monospace,monospace;font-size:12px}.small{color:#666;font-size:12px}
table.claims{table-layout:fixed}col.verdict{width:90px}col.bar{width:300px}col.numbers{width:220px}
svg{max-width:100%;height:auto}details{margin-top:4px}summary{cursor:pointer;color:#444;font-size:12px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 12px;margin:6px 0;font-size:12px}
dt{color:#666}dd{margin:0;overflow-wrap:anywhere}
figure{margin:10px 0;max-width:100%}figcaption{font-size:12px;color:#444;margin-bottom:4px;overflow-wrap:anywhere}
.scroll{overflow-x:auto}tr.claim td{border-bottom:none}tr.card td{padding-top:0}
"""

_RED, _BLUE = (178, 24, 43), (33, 102, 172)


def _colour(v: float, scale: float) -> str:
    """A diverging scale: white at 0, red for positive, blue for negative, saturated at |v| = scale."""
    k = min(1.0, abs(v) / scale) if scale else 0.0
    r, g, b = _RED if v >= 0 else _BLUE
    return f"rgb({round(255 + (r - 255) * k)},{round(255 + (g - 255) * k)},{round(255 + (b - 255) * k)})"


def nice_ticks(a: float, b: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values spanning [a, b]."""
    import math

    span = b - a
    if span <= 0:
        return [a]
    raw = span / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(a / step) * step
    return [round(first + i * step, 12) for i in range(int((b - first) / step + 1e-9) + 1)]


def kind_axes(claims: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """One effect axis per claim kind, spanning every effect, CI, threshold and zero of that kind."""
    spans: dict[str, list[float]] = {}
    for r in claims:
        xs = [r["ci"][0], r["ci"][1], r["effect"], 0.0, *[b for b in r.get("bounds", []) if b is not None]]
        spans.setdefault(r.get("kind") or r.get("method") or "", []).extend(float(x) for x in xs)
    out = {}
    for kind, xs in spans.items():
        a, b = min(xs), max(xs)
        pad = (b - a) * 0.06 or 1.0
        out[kind] = (a - pad, b + pad)
    return out


def effect_svg(r: dict[str, Any], axis: tuple[float, float] | None = None, width: int = 290,
               height: int = 46) -> str:
    """A bar for one claim on its kind's shared axis: the effect as a dot, its CI as a whisker, thresholds
    dashed, zero grey, ticks below."""
    lo, hi, eff = r["ci"][0], r["ci"][1], r["effect"]
    bounds = [b for b in r.get("bounds", []) if b is not None]
    if axis is None:
        axis = kind_axes([r])[r.get("kind") or r.get("method") or ""]
    a, b = axis

    def x(v: float) -> float:
        return 10 + (v - a) / (b - a) * (width - 20)

    colour = "#176b2c" if r["passed"] else "#b00020"
    mid = 14
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="effect {fmt(eff)} CI {fmt(lo)} to {fmt(hi)}">',
             f'<line x1="10" y1="{mid + 14}" x2="{width - 10}" y2="{mid + 14}" stroke="#999"/>']
    for t in nice_ticks(a, b):
        parts.append(f'<line x1="{x(t):.1f}" y1="{mid + 14}" x2="{x(t):.1f}" y2="{mid + 18}" stroke="#999"/>'
                     f'<text x="{x(t):.1f}" y="{mid + 29}" font-size="9" text-anchor="middle" fill="#555">'
                     f'{t:g}</text>')
    parts.append(f'<line x1="{x(0):.1f}" y1="2" x2="{x(0):.1f}" y2="{mid + 14}" stroke="#bbb"/>')
    for t in bounds:
        parts.append(f'<line x1="{x(t):.1f}" y1="2" x2="{x(t):.1f}" y2="{mid + 14}" stroke="#555" '
                     f'stroke-dasharray="3,2"/>')
    parts += [f'<line x1="{x(lo):.1f}" y1="{mid}" x2="{x(hi):.1f}" y2="{mid}" stroke="{colour}" stroke-width="3"/>',
              f'<line x1="{x(lo):.1f}" y1="{mid - 6}" x2="{x(lo):.1f}" y2="{mid + 6}" stroke="{colour}"/>',
              f'<line x1="{x(hi):.1f}" y1="{mid - 6}" x2="{x(hi):.1f}" y2="{mid + 6}" stroke="{colour}"/>',
              f'<circle cx="{x(eff):.1f}" cy="{mid}" r="4" fill="{colour}"/></svg>']
    return "".join(parts)


def strip_svg(r: dict[str, Any], width: int = 320, height: int = 70) -> str:
    """The per-example values as a strip plot (dots jittered deterministically), with the mean and CI."""
    values = [float(v) for v in r.get("values") or []]
    if not values:
        return ""
    xs = values + [r["ci"][0], r["ci"][1], 0.0]
    a, b = min(xs), max(xs)
    pad = (b - a) * 0.06 or 1.0
    a, b = a - pad, b + pad

    def x(v: float) -> float:
        return 10 + (v - a) / (b - a) * (width - 20)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="strip" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{len(values)} per-example values">']
    for i, v in enumerate(values):
        y = 8 + ((i * 0.618034) % 1.0) * 26
        parts.append(f'<circle cx="{x(v):.1f}" cy="{y:.1f}" r="2" fill="#4477aa" fill-opacity="0.55"/>')
    parts.append(f'<line x1="{x(r["ci"][0]):.1f}" y1="40" x2="{x(r["ci"][1]):.1f}" y2="40" stroke="#222" '
                 f'stroke-width="3"/><circle cx="{x(r["effect"]):.1f}" cy="40" r="3.5" fill="#222"/>')
    parts.append(f'<line x1="10" y1="48" x2="{width - 10}" y2="48" stroke="#999"/>')
    for t in nice_ticks(a, b):
        parts.append(f'<line x1="{x(t):.1f}" y1="48" x2="{x(t):.1f}" y2="52" stroke="#999"/>'
                     f'<text x="{x(t):.1f}" y="63" font-size="9" text-anchor="middle" fill="#555">{t:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap_svg(values: list[list[float | None]], rows: list[str], cols: list[str], title: str) -> str:
    """A heatmap on a diverging scale (white = 0, red positive, blue negative) with labelled rows and columns
    (margins sized to the labels, long column labels slanted) and a colour legend."""
    n_cols = max(len(cols), 1)
    cell = max(10, min(44, 640 // n_cols))
    left = 10 + int(6.2 * max([len(r) for r in rows] + [2]))
    longest = max([len(c) for c in cols] + [1])
    slant = longest * 6.2 > cell
    top = 16 + (int(longest * 4.6) if slant else 0)
    flat = [abs(v) for row in values for v in row if v is not None]
    scale = max(flat) if flat else 1.0
    legend_h = 40
    w = max(left + cell * n_cols + 16, 260)
    h = top + cell * len(rows) + legend_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="heatmap" width="{w}" height="{h}" '
           f'viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">']
    for j, c in enumerate(cols):
        cx = left + j * cell + cell / 2
        if slant:
            out.append(f'<text x="{cx:.1f}" y="{top - 4}" font-size="10" text-anchor="start" '
                       f'transform="rotate(-40 {cx:.1f} {top - 4})">{html.escape(c)}</text>')
        else:
            out.append(f'<text x="{cx:.1f}" y="{top - 4}" font-size="10" text-anchor="middle">{html.escape(c)}</text>')
    for i, rlab in enumerate(rows):
        out.append(f'<text x="{left - 6}" y="{top + i * cell + cell * 0.65:.1f}" font-size="10" text-anchor="end">'
                   f'{html.escape(rlab)}</text>')
        for j, v in enumerate(values[i]):
            fill = "#eee" if v is None else _colour(v, scale)
            tip = "n/a" if v is None else f"{v:.3g}"
            out.append(f'<rect x="{left + j * cell}" y="{top + i * cell}" width="{cell - 1}" height="{cell - 1}" '
                       f'fill="{fill}"><title>{html.escape(rlab)} x {html.escape(cols[j])}: {tip}</title></rect>')
            if v is not None and cell >= 36:
                out.append(f'<text x="{left + j * cell + cell / 2}" y="{top + i * cell + cell * 0.6}" '
                           f'font-size="10" text-anchor="middle">{v:.2g}</text>')
    ly = top + cell * len(rows) + 12
    steps = 20
    out.append(f'<g class="legend">')
    for k in range(steps):
        v = -scale + 2 * scale * (k + 0.5) / steps
        out.append(f'<rect x="{left + k * 10}" y="{ly}" width="10" height="10" fill="{_colour(v, scale)}"/>')
    for v, anchor, xx in ((-scale, "start", left), (0.0, "middle", left + steps * 5), (scale, "end", left + steps * 10)):
        out.append(f'<text x="{xx}" y="{ly + 22}" font-size="9" text-anchor="{anchor}">{v:.3g}</text>')
    out.append("</g></svg>")
    return "".join(out)


def _figure(g: dict[str, Any], model: str) -> str:
    e = html.escape
    where = f"{g.get('test', '')}" + (f" · model {model}" if model else "")
    return (f'<figure class="grid"><figcaption><b>{e(g["title"])}</b><br>{e(where)}</figcaption>'
            f'<div class="scroll">{heatmap_svg(g["values"], g["rows"], g["cols"], g["title"])}</div></figure>')


def _card(r: dict[str, Any], grids: list[dict[str, Any]], model: str) -> str:
    e = html.escape
    items = [("test", r["test"]), ("location", r.get("location", "")), ("sites", ", ".join(r["sites"])), ("intervention", r["intervention"]),
             ("metric", r["metric"]), ("method", r.get("method", "")), ("rule", r.get("rule", "")),
             ("p-value", fmt(r.get("p_value"))), ("registry", r.get("registry", "")),
             ("alpha / seed", f"{r['alpha']} / {r['seed']}")]
    items += [(k, fmt(v) if isinstance(v, float) else str(v)) for k, v in sorted((r.get("details") or {}).items())]
    rows = "".join(f"<dt>{e(k)}</dt><dd>{e(str(v))}</dd>" for k, v in items if v not in ("", None))
    strip = strip_svg(r)
    strip = (f'<figure><figcaption>per-example values ({r["n"]}), mean and CI</figcaption>{strip}</figure>'
             if strip else "")
    figs = "".join(_figure(g, model) for g in grids)
    return f"<details><summary>details</summary><dl>{rows}</dl>{strip}{figs}</details>"


def render_html(report: dict[str, Any]) -> str:
    """A single self-contained HTML page of the report: summary, one row per claim (verdict, claim, effect on its
    kind's shared axis, numbers) with a details card (every field, per-example values, the grids its test made),
    and the grids of tests without claims."""
    e = html.escape
    s = report["summary"]
    c = report["controls"]
    lvl = round(100 * (1 - c["alpha"]), 2)
    axes = kind_axes(report["claims"])
    grids_by_test: dict[str, list[dict[str, Any]]] = {}
    for g in report["grids"]:
        grids_by_test.setdefault(g.get("test", ""), []).append(g)
    names = {fp: (m.get("name") or fp[:12]) for fp, m in report["models"].items()}
    shown: set[str] = set()
    rows = []
    for r in report["claims"]:
        cls = "held" if r["passed"] else "rejected"
        verdict = ("held" if r["passed"] else "rejected") + (" (xfail)" if r["outcome"] == "xfailed" else "")
        test = r["test"]
        grids = [] if test in shown else grids_by_test.get(test, [])
        shown.add(test)
        notes = ((f'<br><span class="small">decided by: {e(r["deciding"])}</span>' if r.get("deciding") else "")
                 + (f'<br><span class="small">expected to fail: {e(r["xfail_reason"])}</span>'
                    if r.get("xfail_reason") else ""))
        rows.append(
            f'<tr class="claim"><td class="{cls}">{verdict}</td>'
            f'<td>{e(r["claim"])}<br><span class="mono small" title="{e(test)}">{e(test.split("/")[-1])}</span>'
            f'{notes}</td>'
            f'<td>{effect_svg(r, axes[r.get("kind") or r.get("method") or ""])}</td>'
            f'<td class="mono">{fmt(r["effect"])} [{fmt(r["ci"][0])}, {fmt(r["ci"][1])}]<br>{e(r["threshold"])}'
            f'<br>n={r["n"]}, p={fmt(r.get("p_value"))}</td></tr>'
            f'<tr class="card"><td></td><td colspan="3">{_card(r, grids, names.get(r.get("model", ""), ""))}</td></tr>')
    models = "".join(
        f'<tr><td class="mono">{e(fp[:16])}</td><td>{e(m.get("name") or "")}</td><td>{e(m["architecture"])}</td>'
        f'<td>{m["layers"]}</td><td>{m["heads"]}</td><td>{m.get("experts") or "-"}</td>'
        f'<td>{m["vocab_size"]}</td><td>{e(m["dtype"])}</td><td>{e(m["attn_implementation"])}</td></tr>'
        for fp, m in report["models"].items())
    loose = [g for t, gs in grids_by_test.items() if t not in shown for g in gs]
    maps = "".join(_figure(g, "") for g in loose)
    others = f"<h2>Grids of tests without claims</h2>{maps}" if loose else ""
    versions_ = ", ".join(f"{k} {v}" for k, v in c["versions"].items() if v)
    dec = c.get("decoding")
    decoding_ = ("; ".join(dec["settings"]) + f" ({dec['claims']} claim(s) scored on generated text)" if dec
                 else "none: every claim is scored on a single forward pass (no generated text)")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>pytest-interp claims report</title>
<style>{_CSS}</style></head><body>
<h1>Interpretability claims</h1>
<p id="summary">{s["claims"]} claims: {s["held"]} held, {s["rejected"]} rejected. alpha={c["alpha"]} ({lvl:g}% CIs),
seed={c["seed"]}, {c["n_boot"]} bootstrap resamples. A claim holds only when its confidence interval clears its
threshold (dashed line; grey line: zero). Claims of one kind share an effect axis. Open a claim's details for
every field, its per-example values and the grids its test made.</p>
<table id="claims" class="claims"><colgroup><col class="verdict"><col><col class="bar"><col class="numbers">
</colgroup><thead><tr><th>verdict</th><th>claim / test</th><th>effect and {lvl:g}% CI</th>
<th>effect [{lvl:g}% CI], threshold</th></tr></thead><tbody>{"".join(rows)}</tbody></table>
<h2>Models</h2>
<div class="scroll"><table id="models"><thead><tr><th>fingerprint</th><th>name</th><th>architecture</th><th>layers</th>
<th>heads</th><th>experts</th><th>vocab</th><th>dtype</th><th>attention</th></tr></thead><tbody>{models}</tbody>
</table></div>
{others}
<p class="small">decoding: {e(decoding_)}</p>
<p class="small">{e(versions_)}; device {e(c["device"])}; created {e(report["created"])}</p>
</body></html>
"""
