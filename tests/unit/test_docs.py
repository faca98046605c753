"""The documentation site builds with `mkdocs build --strict` (broken links, missing pages and docstrings that
mkdocstrings cannot render fail it), and its reference shows the public API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly_and_its_reference_shows_the_contracts(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr
    drift = (site / "reference" / "drift" / "index.html").read_text()
    for name in ("Detector", "DriftResult", "AutoencoderDetector", "null_distribution"):
        assert name in drift, name
    assert "TamperedArtifactError" in (site / "reference" / "tracking" / "index.html").read_text()
    assert (site / "decisions" / "0003-no-code-from-storage" / "index.html").is_file()
    # The latest study's page shows its plots, which the site carries; the reference documents the study's records.
    for dataset in ("mnist", "fashion-mnist"):
        results = (site / "results" / dataset / "study" / "index.html").read_text()
        for plot in ("budget", "stream", "detection", "remedies"):
            assert f'src="../{plot}.png"' in results and (site / "results" / dataset / f"{plot}.png").stat().st_size > 10_000, (dataset, plot)
    assert "StudyConfig" in (site / "reference" / "study" / "index.html").read_text()
