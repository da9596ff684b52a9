"""An installed copy works outside the source tree: the wheel and the sdist carry the
package data the app reads (the PromQL guide), and the service serves it from anywhere.

The wheel is built without build isolation and installed into a fresh virtual
environment that borrows the already-installed dependencies of this one (a ``.pth``
line), so the whole module takes seconds, not a download.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import LOOPBACK, free_port, poll

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "PROMQL.md"
#: What the Dockerfile copies into its build context.
SOURCES = ("pyproject.toml", "README.md", "app", "docs")
BUILD_TIMEOUT_S = 120

pytestmark = pytest.mark.install


def _run(argv: list[str], cwd: Path) -> str:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's sources, as a clean checkout has them (symlinks kept as symlinks)."""
    copy = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def _build(kind: str, source: Path, out: Path) -> Path:
    """Build a wheel or an sdist of ``source`` with setuptools' PEP 517 hooks."""
    hook = f"build_{kind}"
    name = _run([sys.executable, "-c", f"from setuptools import build_meta; print(build_meta.{hook}({str(out)!r}))"],
                cwd=source).strip().splitlines()[-1]
    return out / name


def test_the_sdist_carries_the_guide_as_a_file(source_copy: Path, tmp_path: Path) -> None:
    sdist = _build("sdist", source_copy, tmp_path)
    with tarfile.open(sdist) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith("/app/guide/PROMQL.md"))
        assert member.isfile()  # not a link to a docs/ that an install would not have
        assert archive.extractfile(member).read() == GUIDE.read_bytes()  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def installed(source_copy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed (not editable); its bin dir."""
    wheel = _build("wheel", source_copy, tmp_path_factory.mktemp("dist"))
    venv = tmp_path_factory.mktemp("venv")
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=venv)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).strip()
    # The dependencies already installed here, after the venv's own site-packages: so the
    # wheel's ``app`` wins over this checkout's editable one.
    Path(site, "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
          "--no-index", "--disable-pip-version-check", str(wheel)], cwd=venv)
    return venv / "bin"


@pytest.fixture(scope="module")
def served_elsewhere(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The installed console script, started from a directory with no sources in it."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    port = free_port()
    env = {**os.environ, "GATEWAY_METRICS_ACCESS_LOG": "false", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    process = subprocess.Popen(
        [str(installed / "gateway-metrics"), "--host", LOOPBACK, "--port", str(port), "--log-level", "warning"],
        cwd=elsewhere, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    url = f"http://{LOOPBACK}:{port}"
    try:
        poll(lambda: process.poll() is not None or httpx.get(f"{url}/health", timeout=2).status_code == 200,
             timeout=30, what="the installed service")
        assert process.poll() is None, process.stdout.read().decode()[-2000:]  # type: ignore[union-attr]
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_installed_package_is_not_this_checkout(installed: Path, tmp_path: Path) -> None:
    where = _run([str(installed / "python"), "-c", "import app; print(app.__file__)"], cwd=tmp_path).strip()
    assert Path(where).resolve().is_relative_to(installed.parent.resolve())


def test_an_installed_copy_serves_the_promql_guide_from_anywhere(served_elsewhere: str) -> None:
    response = httpx.get(f"{served_elsewhere}/prometheus/metrics/docs", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/markdown")
    assert response.content == GUIDE.read_bytes()


def test_the_dockerfile_installs_the_package_not_editable() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -e" not in dockerfile and "--editable" not in dockerfile
    assert "RUN pip install /tmp/src" in dockerfile
    for name in SOURCES:  # the build context the wheel is built from
        assert f"COPY {name}" in dockerfile or f" {name} " in dockerfile, name


def test_an_installed_copy_serves_the_status_page_from_anywhere(served_elsewhere: str) -> None:
    response = httpx.get(f"{served_elsewhere}/prometheus/metrics/status", timeout=10)
    assert response.status_code == 200
    assert "<html" in response.text.lower() and "</style>" in response.text.lower()
