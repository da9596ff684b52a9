"""The documentation cannot drift from the code.

- every relative link and anchor of README.md and docs/*.md resolves (GitHub's slugs);
- every ``GATEWAY_METRICS_*`` variable of ``Settings`` is in docs/SETTINGS.md with its
  default, and nothing there names a variable that does not exist;
- every route of the OpenAPI schema is in the README's endpoint table, and nothing more;
- the python blocks of docs/EMBEDDING.md run, except those marked as fragments with an
  HTML comment (``<!-- fragment: why -->``) on the line before the block.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from app.main import create_app
from app.settings import Settings
from app.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FRAGMENT_MARKER = "<!-- fragment"
SETTING_ROW = re.compile(r"^\| `(GATEWAY_METRICS_[A-Z0-9_]+)` \| ([^|]+) \|", re.MULTILINE)


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(re.sub(r"`[^`]*`", "", line))
    return lines


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its rendered text lowercased, punctuation but
    ``-`` and ``_`` dropped, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links render as their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").strip().lower()
    kept = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered as GitHub does."""
    seen: dict[str, int] = {}
    result = set()
    fenced = False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if fenced or not heading:
            continue
        slug = github_slug(heading.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_github_slug_rules() -> None:
    assert github_slug("One breaker per fleet: sharing between workers and replicas") == (
        "one-breaker-per-fleet-sharing-between-workers-and-replicas")
    assert github_slug("TCP_NODELAY with several workers") == "tcp_nodelay-with-several-workers"
    assert github_slug("Local history (snapshots)") == "local-history-snapshots"
    assert github_slug("The `release` label") == "the-release-label"
    assert github_slug("outage: mean over the seeds (shares in %; 'never' counts as inf)") == (
        "outage-mean-over-the-seeds-shares-in--never-counts-as-inf")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(document: Path) -> None:
    broken, checked = [], 0
    for line in prose_lines(document.read_text()):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            path_part, _, anchor = target.partition("#")
            resolved = (document.parent / path_part).resolve() if path_part else document
            if not resolved.exists():
                broken.append(f"{target}: no such file")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{target}: no such anchor in {resolved.relative_to(ROOT)}")
    assert not broken, broken
    if document.name in ("README.md", "SETTINGS.md"):
        assert checked, "the checker found the links"


def _shown(default: object) -> str | None:
    """The default as the settings table spells it; None for an unset one."""
    if default in (None, {}):
        return None
    if isinstance(default, tuple):
        return "`" + ",".join(str(v) for v in default) + "`"
    return f"`{str(default).lower() if isinstance(default, bool) else default}`"


def _defaults() -> dict[str, str | None]:
    defaults = {}
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        defaults[f"GATEWAY_METRICS_{name.upper()}"] = _shown(default)
    return defaults


def _check_rows(rows: list[tuple[str, str]], defaults: dict[str, str | None]) -> None:
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a variable is documented twice"
    for name, cell in rows:
        assert name in defaults, f"{name} is documented but Settings has no such field"
        shown = defaults[name]
        if shown is None:
            assert cell.strip() in ("(unset)", "(none)"), name
        else:
            assert cell.strip() == shown, f"{name}: documented {cell.strip()}, default {shown}"


def test_every_setting_is_in_settings_md_with_its_default() -> None:
    text = (ROOT / "docs" / "SETTINGS.md").read_text()
    defaults = _defaults()
    rows = SETTING_ROW.findall(text)
    _check_rows(rows, defaults)
    assert sorted(name for name, _ in rows) == sorted(defaults), "every variable of Settings has its row"
    # Named anywhere else on the page: a setting, or a variable the compose file reads.
    compose = (ROOT / "docker-compose.yml").read_text()
    for name in set(re.findall(r"GATEWAY_METRICS_[A-Z0-9_]*[A-Z0-9]", text)):
        assert name in defaults or "${" + name in compose, f"{name} is neither a setting nor a compose variable"


def test_the_readme_settings_table_shows_the_true_defaults() -> None:
    rows = SETTING_ROW.findall((ROOT / "README.md").read_text())
    assert len(rows) == 5
    _check_rows(rows, _defaults())


def _endpoint_table() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Endpoints\n", 1)[1].split("\n## ", 1)[0]
    return "\n".join(line for line in section.splitlines() if line.startswith("| `"))


def test_every_route_of_the_openapi_schema_is_in_the_readme() -> None:
    schema = create_app(telemetry=Telemetry(Settings(access_log=False))).openapi()
    documented = set(re.findall(r"^\| `([A-Z]+ /[^`]*)`", _endpoint_table(), re.MULTILINE))
    routes = {f"{method.upper()} {path}" for path, item in schema["paths"].items() for method in item}
    assert routes, "the schema has routes"
    assert routes - documented == set(), "routes missing from the README's endpoint table"
    assert documented - routes == set(), "the README's endpoint table names routes the app does not have"


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(line, code, runnable) of every ```python block; a fragment is marked on the line
    before its fence."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if re.match(r"^```python\s*$", lines[i]):
            previous = next((line for line in reversed(lines[:i]) if line.strip()), "")
            start, i = i, i + 1
            while not lines[i].startswith("```"):
                i += 1
            blocks.append((start + 1, "\n".join(lines[start + 1:i]) + "\n",
                           not previous.strip().startswith(FRAGMENT_MARKER)))
        i += 1
    return blocks


EMBEDDING_BLOCKS = python_blocks((ROOT / "docs" / "EMBEDDING.md").read_text())


def test_embedding_has_a_runnable_main_example() -> None:
    runnable = [code for _, code, run in EMBEDDING_BLOCKS if run]
    assert runnable, "docs/EMBEDDING.md has runnable python blocks"
    main = runnable[0]
    for needed in ("Telemetry(", "MetricsMiddleware", "include_router", "choose(", "allow(",
                   "permit=permit", "track_model_inference", "record_credits_used"):
        assert needed in main, needed


@pytest.mark.parametrize("line,code,runnable", EMBEDDING_BLOCKS, ids=lambda v: f"line{v}" if isinstance(v, int) else "")
def test_embedding_python_blocks_run(line: int, code: str, runnable: bool, tmp_path: Path) -> None:
    if not runnable:
        pytest.skip(f"docs/EMBEDDING.md line {line} is marked as a fragment")
    script = tmp_path / "block.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith(("GATEWAY_METRICS_", "PROMETHEUS_MULTIPROC_DIR"))}
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"docs/EMBEDDING.md line {line}:\n{result.stdout[-2000:]}{result.stderr[-3000:]}"


def test_fragment_markers_mark_python_blocks() -> None:
    """A marker that precedes no python block would silently mark nothing."""
    for document in DOCUMENTS:
        lines = document.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith(FRAGMENT_MARKER):
                following = next((rest for rest in lines[i + 1:] if rest.strip()), "")
                assert following.startswith("```python"), f"{document.name}:{i + 1}"
