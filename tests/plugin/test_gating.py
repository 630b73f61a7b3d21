"""CI gating: JSON/HTML reports, JUnit properties, the pre-registration registry, baselines and drift gates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCHEMA = Path(__file__).resolve().parents[2] / "pytest_interp" / "report.schema.json"


def run(project, *args, xdist=False, subprocess=False):
    extra = ["-n", "2"] if xdist else []
    if xdist or subprocess:
        return project.runpytest_subprocess("-p", "no:cacheprovider", *extra, *args)
    return project.runpytest(*args)


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_json_report_validates_against_its_schema(claims_project, xdist):
    jsonschema = pytest.importorskip("jsonschema")
    out = claims_project.path / "report.json"
    result = run(claims_project, f"--interp-json={out}", xdist=xdist)
    result.assert_outcomes(passed=2, failed=1)
    report = json.loads(out.read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["summary"] == {"claims": 3, "held": 2, "rejected": 1}
    claim = next(c for c in report["claims"] if c["test"].endswith("test_false_claim"))
    assert claim["passed"] is False and claim["outcome"] == "failed" and claim["sites"] == ["resid 0"]
    model = report["models"][claim["model"]]
    assert model["architecture"] == "llama" and model["layers"] == 2 and model["heads"] == 4
    assert report["controls"]["alpha"] == 0.05 and report["controls"]["versions"]["torch"]
    # version 2: per-example values (the effect is their mean) and p-values, so anyone can redo the statistics
    assert report["version"] == 2 and len(claim["values"]) == claim["n"] == 16
    assert claim["location"] == "test_claims.py:" + str(1 + next(
        i for i, line in enumerate((claims_project.path / "test_claims.py").read_text().splitlines())
        if line.startswith("def test_false_claim")))
    assert abs(sum(claim["values"]) / claim["n"] - claim["effect"]) < 1e-9 and 0 <= claim["p_value"] <= 1
    # a version-1 report (no values, reasons or deciding numbers) still validates
    old = dict(report, version=1, claims=[{k: v for k, v in c.items() if k not in ("values", "xfail_reason",
                                                                                  "deciding", "location")}
                                          for c in report["claims"]])
    jsonschema.validate(old, json.loads(SCHEMA.read_text()))


def test_json_report_same_serial_and_xdist(claims_project):
    a, b = claims_project.path / "a.json", claims_project.path / "b.json"
    run(claims_project, f"--interp-json={a}")
    run(claims_project, f"--interp-json={b}", xdist=True)
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    strip = lambda r: [{k: v for k, v in c.items() if k != "outcome"} for c in r["claims"]]  # noqa: E731
    assert strip(ra) == strip(rb) and ra["summary"] == rb["summary"]


def test_junit_xml_carries_effects(claims_project):
    xml = claims_project.path / "junit.xml"
    run(claims_project, f"--junitxml={xml}")
    text = xml.read_text()
    for prop in ['name="interp[0].effect"', 'name="interp[0].ci_low"', 'name="interp[0].verdict" value="rejected"',
                 'name="interp[0].threshold"']:
        assert prop in text, prop


def test_registry_flow(claims_project):
    p = claims_project
    registry = p.path / "interp-registry.json"
    run(p, "--interp-register").stdout.fnmatch_lines(["registry *: 3 added, 0 re-registered, 0 other entries kept*"])
    data = json.loads(registry.read_text())
    assert data["schema"] == "pytest-interp/registry" and data["version"] == 1
    assert list(data["claims"]) == sorted(data["claims"]) and len(data["claims"]) == 3
    entry = data["claims"]["test_claims.py::test_final_stream_is_necessary#0"]
    for field in ["claim", "sites", "intervention", "metric", "threshold", "alpha", "code_hash", "registered_at"]:
        assert entry[field] is not None, field
    registered_at = entry["registered_at"]

    # CI mode passes while nothing changed
    ok = run(p, "--interp-require-registered")
    ok.assert_outcomes(passed=2, failed=1)
    ok.stdout.fnmatch_lines(["held *", "*(95% CI) vs *; n=16; registered"])

    # edit a threshold: CI mode fails and says what changed
    src = (p.path / "test_claims.py").read_text()
    (p.path / "test_claims.py").write_text(src.replace("at_least=1e-6", "at_least=2e-6"))
    bad = run(p, "--interp-require-registered")
    bad.assert_outcomes(passed=1, failed=2)
    bad.stdout.fnmatch_lines(["*pre-registration check failed*",
                              "*test_final_stream_is_necessary#0: changed since registration:*",
                              "*threshold: registered 'damage >= 1e-06', now 'damage >= 2e-06'*",
                              "*the test's code changed*", "*re-register with*"])
    # a new, unregistered claim fails too
    p.makepyfile(test_new="import pytest_interp as pi, torch\n"
                 "def test_new(subject):\n"
                 "    pi.assert_not_necessary(subject, pi.resid(1).at(-1), inputs=torch.ones(16, 5, dtype=torch.long),"
                 " metric=pi.metrics.loss(), within=0.1, how=pi.Zero())\n")
    run(p, "--interp-require-registered", "test_new.py").stdout.fnmatch_lines(["*not in the registry*"])

    # re-register the edited file only: the other entries are kept, unchanged ones keep their time
    again = run(p, "--interp-register", "test_claims.py")
    again.stdout.fnmatch_lines(["registry *: 0 added, 1 re-registered, 0 other entries kept*"])
    data = json.loads(registry.read_text())
    assert len(data["claims"]) == 3
    assert data["claims"]["test_claims.py::test_final_stream_is_necessary#0"]["previous"]["threshold"] == \
        "damage >= 1e-06"
    assert data["claims"]["test_claims.py::test_false_claim#0"]["registered_at"] == registered_at
    run(p, "--interp-require-registered", "test_claims.py").assert_outcomes(passed=2, failed=1)


def test_register_under_xdist_writes_once_from_the_controller(claims_project):
    result = run(claims_project, "--interp-register", xdist=True)
    result.stdout.fnmatch_lines(["registry *: 3 added*"])
    assert len(json.loads((claims_project.path / "interp-registry.json").read_text())["claims"]) == 3
    leftovers = [f for f in os.listdir(claims_project.path) if f.endswith(".tmp")]
    assert not leftovers


def test_require_registered_without_a_registry_is_a_usage_error(claims_project):
    result = run(claims_project, "--interp-require-registered")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no registry at" in result.stderr.str()


FIXTURE_CLAIMS = """
import pytest_interp as pi

def test_layer_1_is_necessary(subject):
    data = pi.repeated_tokens(subject, n=32, seed=0, layout="halves")
    pi.assert_necessary(subject, pi.attn(1), inputs=data.tokens, metric=pi.metrics.loss(mask=data.second_half),
                        at_least=1.0)

def test_head_0_2_is_not_necessary(subject):
    data = pi.repeated_tokens(subject, n=32, seed=0, layout="halves")
    pi.assert_not_necessary(subject, pi.head(0, 2), inputs=data.tokens,
                            metric=pi.metrics.loss(mask=data.second_half), within=0.2)
"""


@pytest.mark.parametrize("xdist", [False, True], ids=["serial", "xdist"])
def test_baseline_drift_gate_on_a_perturbed_fixture_model(pytester, tmp_path, xdist):
    import torch
    from safetensors.torch import load_file, save_file

    from tests.helpers import INDUCTION

    p = pytester
    p.makeini(f"[pytest]\ninterp_model = {INDUCTION}\ninterp_n_boot = 500\ninterp_n_perm = 500\n")
    p.makepyfile(test_fixture_claims=FIXTURE_CLAIMS)
    run(p, "--interp-save-baseline=v1", xdist=xdist, subprocess=True).stdout.fnmatch_lines(["saved baseline 'v1' (2 claims)*"])
    assert (p.path / ".interp" / "baselines" / "v1.json").exists()
    same = run(p, "--interp-compare=v1", "--interp-fail-drift=abs=1e-6", xdist=xdist, subprocess=True)
    assert same.ret == pytest.ExitCode.OK and "drifted beyond tolerance" not in same.stdout.str()
    # a new release whose layer-1 attention weights moved
    release = tmp_path / "release"
    shutil.copytree(INDUCTION, release)
    weights = load_file(release / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for name, w in weights.items():
        if "layers.1.self_attn.q_proj" in name:
            weights[name] = w + torch.randn(w.shape, generator=g) * w.std() * 1.5
    save_file(weights, release / "model.safetensors", metadata={"format": "pt"})
    drifted = run(p, f"--interp-model={release}", "--interp-compare=v1", "--interp-fail-drift=rel=10%",
                  xdist=xdist, subprocess=True)
    assert drifted.ret == pytest.ExitCode.TESTS_FAILED
    drifted.stdout.fnmatch_lines(["drift from baseline 'v1' (tolerance abs=0, rel=10%):",
                                  "*!!*test_layer_1_is_necessary#0*", "*drifted beyond tolerance*",
                                  "next: inspect the drifted claims*"])
    # without the gate the same drift is shown but does not fail the run
    shown = run(p, f"--interp-model={release}", "--interp-compare=v1", "-k", "layer_1", xdist=xdist,
                subprocess=True)
    assert shown.ret == pytest.ExitCode.OK
    shown.stdout.fnmatch_lines(["drift from baseline 'v1':", "*test_layer_1_is_necessary#0*compared*"])


def test_saving_over_a_baseline_is_refused_then_kept_aside(claims_project):
    p = claims_project
    run(p, "--interp-save-baseline=v1")
    refused = run(p, "--interp-save-baseline=v1")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR and "exists" in refused.stderr.str()
    run(p, "--interp-save-baseline=v1", "--interp-replace-baseline").stdout.fnmatch_lines(
        ["previous baseline kept as *v1.*.json"])
    assert len(list((p.path / ".interp" / "baselines").glob("v1*.json"))) == 2


@pytest.mark.parametrize("args,words", [
    (["--interp-fail-drift=abs=0.1"], "needs --interp-compare"),
    (["--interp-compare=nope"], "no baseline at"),
    (["--interp-compare=v1", "--interp-fail-drift=sideways=3"], "unknown tolerance"),
    (["--interp-save-baseline=../etc"], "is not valid"),
    (["--interp-register", "--interp-require-registered"], "exclude each other"),
])
def test_bad_gating_options_are_usage_errors(claims_project, args, words):
    result = run(claims_project, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert words in result.stderr.str() and "Traceback" not in result.stderr.str()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("CI must install Debian's chromium (see .ci/run) to check the HTML report renders")
    pytest.skip("chromium is not installed")


PROBE = """<script>
document.querySelectorAll('details').forEach(d => d.open = true);
const out = {page: document.documentElement.scrollWidth - window.innerWidth, wide: [], clipped: [],
             grids: document.querySelectorAll('figure.grid').length, untitled: 0, unlegended: 0};
document.querySelectorAll('td, figure, table, svg').forEach(el => {
  const r = el.getBoundingClientRect();
  if (r.right > window.innerWidth + 1 && !el.closest('.scroll')) out.wide.push(el.tagName + ':' + (el.className.baseVal ?? el.className));
});
document.querySelectorAll('svg').forEach(svg => {
  const vb = svg.viewBox.baseVal;
  if (!vb || !vb.width) return;
  svg.querySelectorAll('text').forEach(t => {
    const b = t.getBBox();
    const m = t.getCTM() && svg.getCTM() ? svg.getCTM().inverse().multiply(t.getCTM()) : null;
    const pts = [[b.x, b.y], [b.x + b.width, b.y + b.height]].map(([x, y]) => {
      if (!m) return [x, y];
      return [m.a * x + m.c * y + m.e, m.b * x + m.d * y + m.f];
    });
    for (const [x, y] of pts) {
      if (x < -1 || x > vb.width + 1 || y < -1 || y > vb.height + 1) { out.clipped.push(t.textContent); break; }
    }
  });
});
document.querySelectorAll('figure.grid').forEach(f => {
  if (!f.querySelector('figcaption b') || !f.querySelector('figcaption').textContent.includes('::')) out.untitled++;
  if (!f.querySelector('.legend')) out.unlegended++;
});
const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _probe(browser, flags, page, width):
    dom = subprocess.run([browser, *flags, f"--window-size={width},900", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    return dom, json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"').replace("&amp;", "&"))


def test_html_report_renders_in_headless_chromium(claims_project, tmp_path):
    browser = _chromium()
    html = tmp_path / "report.html"
    claims_project.makepyfile(test_sweep="""
import torch, pytest_interp as pi
def test_sweep_and_its_claim(subject):
    sw = pi.sweep(subject, inputs=torch.ones(4, 6, dtype=torch.long) * 3, metric=pi.metrics.kl(), how=pi.Zero())
    assert len(sw) == 8
    pi.assert_necessary(subject, pi.resid(2), inputs=torch.ones(16, 6, dtype=torch.long) * 3,
                        metric=pi.metrics.kl(), at_least=1e-6, how=pi.Zero())
""")
    run(claims_project, f"--interp-html={html}").assert_outcomes(passed=3, failed=1)
    text = html.read_text()
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    assert "<script" not in text  # a static page
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    for width in (1000, 1400, 1600):
        dom, probe = _probe(browser, flags, probed, width)
        assert dom.count('<tr class="claim">') == 4
        assert dom.count('class="strip"') == 4  # every claim's per-example values
        assert probe["page"] <= 0 and not probe["wide"], (width, probe)  # nothing wider than the window
        assert not probe["clipped"], (width, probe["clipped"])  # no label outside its picture
        assert probe["grids"] == 2 and probe["untitled"] == 0 and probe["unlegended"] == 0, probe
    assert "ablation sweep: zero-ablate, damage to kl" in dom and "Benjamini-Hochberg adjusted p (q-value)" in dom
    assert "test_sweep.py::test_sweep_and_its_claim" in dom
    assert "4 claims: 3 held, 1 rejected" in dom
    for width in (1000, 1400):
        shot = tmp_path / f"report-{width}.png"
        subprocess.run([browser, *flags, f"--screenshot={shot}", f"--window-size={width},1400", probed.as_uri()],
                       capture_output=True, timeout=120)
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a rendered page, not a blank one
        if os.environ.get("INTERP_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["INTERP_SCREENSHOTS"]) / shot.name)
