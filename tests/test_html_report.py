"""`fedlab report`: a tiny sweep (2 configs x 2 seeds) rendered to one HTML page, checked in headless Chromium.

The run directories are written by hand (config.yaml, metrics.csv, summary.json, plots/accuracy.png):
training is too slow for the default suite. Chromium loads a copy of the page with a probe script
inserted first in <head>; on the load event the probe writes what it saw (errors, images decoded,
table rows, the CI cells, any network request) into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import matplotlib
import pytest
from conftest import ROOT, compose

from fedlab_app import html_report
from fedlab_app.results import RunDir

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

needs_chromium = pytest.mark.skipif(html_report.find_chromium() is None,
                                    reason="no Chromium: apt-get install -y chromium (as .ci/run does)")
# final accuracies per (J, seed)
ACCS = {(4, 0): 0.80, (4, 1): 0.84, (8, 0): 0.70, (8, 1): 0.76}
PROBE = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + (e.message || (e.target && (e.target.src
  || e.target.href)) || 'resource')), true);
document.addEventListener('securitypolicyviolation', e => window.__errors.push('csp: ' + e.blockedURI));
for (const level of ['error', 'warn']) {
  const orig = console[level];
  console[level] = (...a) => { window.__errors.push(level + ': ' + a.join(' ')); orig.apply(console, a); };
}
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const out = {errors: window.__errors, images: imgs.length,
    decoded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,
    rows: document.querySelectorAll('#summary tbody tr').length,
    final: [...document.querySelectorAll('#summary tbody td[data-col="final.test_acc"]')].map(td => td.textContent),
    requests: performance.getEntriesByType('resource').map(r => r.name)};
  const pre = document.createElement('pre');
  pre.id = 'probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def make_sweep(root: Path) -> Path:
    """2 configs (client.local_steps 4, 8) x 2 seeds, 3 evaluated rounds each, with one plot per run."""
    for (j, seed), acc in ACCS.items():
        rd = RunDir(root / f"J{j}_seed{seed}")
        rd.create()
        rd.write_config(compose(f"client.local_steps={j}", f"seed={seed}", "rounds=3"))
        curve = [acc - 0.2, acc - 0.05, acc]
        for r, a in enumerate(curve, 1):
            rd.append_metrics({"round": r, "test_acc": a, "test_loss": 1 - a, "messages": 20 * r, "bytes": 1e6 * r,
                               "sim_time_s": 2.0 * r * j})
        rd.write_summary({"status": "finished", "rounds": 3, "final": {"test_acc": acc, "test_loss": 1 - acc},
                          "comm": {"messages": 60, "bytes": 3e6}, "sim_time_s": 6.0 * j, "wall_time_s": 1.0,
                          "per_class": {"precision": [0.9, 0.7], "recall": [0.8, 0.75], "f1": [0.85, 0.72],
                                        "support": [50, 50]}})
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([1, 2, 3], curve)
        fig.savefig(rd.plots_dir / "accuracy.png", dpi=60)
        plt.close(fig)
    return root


def test_report_is_self_contained(tmp_path):
    page = html_report.build_report([str(make_sweep(tmp_path / "sweep"))], out=str(tmp_path / "r.html"))
    html = page.read_text()
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # no file or network reference
    assert html.count('<img src="data:image/png;base64,') == 4 + 1  # one plot per run + the curves
    assert html.count('<tr class="group') == 2
    assert "0.8200 ± 0.2541" in html and "0.7300 ± 0.3812" in html


@needs_chromium
def test_report_in_headless_chromium(tmp_path):
    """Loads without error, every image decoded, one row per group, and the CI shown is the one computed
    here: J=4, final accuracies 0.80 and 0.84 -> mean 0.82, s = 0.04 / sqrt(2), half = 12.706 * s / sqrt(2)."""
    page = html_report.build_report([str(make_sweep(tmp_path / "sweep"))], out=str(tmp_path / "report.html"))
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("<head>", "<head>\n" + PROBE, 1))
    cmd = html_report.chromium_command(probe.as_uri(), "--enable-logging=stderr", "--v=0",
                                       "--virtual-time-budget=5000", "--dump-dom", user_data_dir=str(tmp_path / "prof"))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert m, f"the probe did not run; stderr: {proc.stderr[-2000:]}"
    seen = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line]
    assert seen["errors"] == [] and console == [], (seen["errors"], console)
    assert seen["requests"] == []  # nothing fetched: every image is inline
    assert seen["images"] == 5 and seen["decoded"] == 5
    assert seen["rows"] == 2  # one per group (J=4, J=8), seeds pooled
    for j, shown in zip((4, 8), seen["final"]):
        a, b = ACCS[(j, 0)], ACCS[(j, 1)]
        s = abs(a - b) / math.sqrt(2)  # sample std of two values
        assert shown == f"{(a + b) / 2:.4f} ± {12.706 * s / math.sqrt(2):.4f}"


@pytest.mark.slow
@needs_chromium
def test_report_screenshot(tmp_path):
    """The page renders to a PNG; kept under results/report/ when FEDLAB_KEEP_SCREENSHOT is set."""
    import os

    page = html_report.build_report([str(make_sweep(tmp_path / "sweep"))], out=str(tmp_path / "report.html"),
                                    title="fedlab report: a tiny sweep (J = 4, 8) x 2 seeds")
    dest = ROOT / "results/report" if os.environ.get("FEDLAB_KEEP_SCREENSHOT") else tmp_path
    png = html_report.screenshot(page, dest / "tiny_sweep.png", height=1400)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
