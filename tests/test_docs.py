"""The documentation site builds with ``mkdocs build --strict`` (broken links fail)."""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _mkdocs() -> list[str]:
    exe = shutil.which("mkdocs") or str(pathlib.Path(sys.executable).parent / "mkdocs")
    if not pathlib.Path(exe).exists():
        pytest.importorskip("mkdocs", reason="mkdocs is not installed")
        return [sys.executable, "-m", "mkdocs"]
    return [exe]


def test_every_nav_page_exists():
    text = (ROOT / "mkdocs.yml").read_text()
    pages = [
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().endswith(".md")
    ]
    assert "ablate.md" in pages and "api.md" in pages
    for page in pages:
        assert (ROOT / "docs" / page).is_file(), page


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed")
    proc = subprocess.run(
        [*_mkdocs(), "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "ablate" / "index.html").is_file()
