"""The documentation: every page's code runs and prints what the page shows, every
public name has a docstring and a reference entry, every link of the README and
the pages resolves, the README stays a landing page, the figures script runs, and
the strict mkdocs build fails on each kind of problem it must catch (when mkdocs
is installed: the `docs` extra; `.ci/run` builds the whole site strictly).

Each page runs as a reader would run it (`docs/pages.py`): in a fresh
interpreter, in a temporary directory, top to bottom. A page's hand-computed
arrays and printed figures are checked inside its own blocks (asserts, and the
printed output against the page's `text` blocks), so what these tests compare
against is the page itself: hand computations, the texts' numbers, autodiff.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
MARKDOWN = sorted(DOCS.rglob("*.md")) + [README]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


pages = _load("docs_pages", DOCS / "pages.py")
coverage = _load("docs_api_coverage", DOCS / "api_coverage.py")


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _has_code(path: Path) -> bool:
    return any(
        b.lang == "python" and not b.skip
        for b in pages.blocks(path.read_text(encoding="utf-8"))
    )


# XLA:CPU's fast-compile options, as tests/helpers.py uses them: LLVM's
# optimisation level and the fusion emitters change compile time (3x here), not
# what is computed, to the last digit the pages print.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


def _env() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    flags = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
    return dict(os.environ, PYTHONPATH=path, MPLBACKEND="Agg", XLA_FLAGS=flags)


# ------------------------------------------------------------ the pages' code


@pytest.mark.parametrize("page", [p for p in MARKDOWN if _has_code(p)], ids=_rel)
def test_page_code_runs_and_prints_what_the_page_shows(page, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(DOCS / "pages.py"), str(page)],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]


def test_the_tutorials_and_the_readme_have_code():
    """Every tutorial and guide teaches by running code (API pages excepted)."""
    prose = {DOCS / "index.md"} | set((DOCS / "api").glob("*.md"))
    prose |= {DOCS / "guides" / n for n in ("architecture.md", "development.md")}
    prose |= {DOCS / "guides" / "experiments.md"}
    without = [_rel(p) for p in MARKDOWN if p not in prose and not _has_code(p)]
    assert not without, f"pages without a python block: {without}"


def test_output_blocks_compare_numbers_to_their_last_digit():
    assert pages.same_output("x = 0.13849856\n", "x = 0.13849857") is None
    assert pages.same_output("x = 0.13849858", "x = 0.13849856") is not None
    assert (
        pages.same_output("[[ 1.  -0.5]]", "[[1.0 -0.5]]") is not None
    )  # "1." vs "1.0"
    assert pages.same_output("a  b\n", "a b") is None
    assert pages.same_output("1e-08", "2e-08") is None
    assert pages.same_output("loss 2.5", "loss 2.5 extra") is not None


def test_blocks_pair_code_with_its_output_and_honour_skip():
    text = (
        "```python\nprint(1)\n```\n\n```text\n1\n```\n\nprose\n\n```text\nfree\n```\n"
        "<!-- docs: skip -->\n```python\nraise SystemExit(1)\n```\n"
    )
    found = pages.blocks(text)
    assert [(b.lang, b.output, b.skip) for b in found] == [
        ("python", "1", False),
        ("text", None, False),
        ("python", None, True),
    ]
    assert found[0].line == 2


def test_a_failing_block_is_reported_with_its_page_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# t\n\n```python\nx = 1\n```\n\n```python\nassert x == 2\n```\n")
    out = tmp_path / "out.txt"
    with out.open("w") as f:
        assert not pages.run_page(page, out=f)
    assert f"{page}:8: the block failed" in out.read_text()
    assert f'File "{page}", line 8' in out.read_text()


# -------------------------------------------------------------- API reference


def test_every_public_name_has_a_docstring_and_a_reference_entry():
    assert coverage.problems(DOCS / "api") == []


def test_the_coverage_check_finds_a_missing_entry_and_a_bad_directive(tmp_path):
    api = tmp_path / "api"
    shutil.copytree(DOCS / "api", api)
    ops = api / "ops.md"
    text = ops.read_text().replace("::: funcnn.ops.dense_reference\n", "")
    ops.write_text(text + "\n::: funcnn.ops.no_such_op\n\n::: funcnn.ops.dense\n")
    found = coverage.problems(api)
    assert "funcnn.ops.dense_reference has no '::: ...' entry in docs/api/*.md" in found
    assert any(p.startswith("api/ops.md: '::: funcnn.ops.no_such_op'") for p in found)
    # funcnn.ops.dense is a function and a module: mkdocstrings would render the
    # module, so the entry must say funcnn.ops.dense.dense.
    assert any("write '::: funcnn.ops.dense.dense'" in p for p in found)


def test_the_coverage_check_finds_a_name_without_a_docstring(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        '"""A package."""\nfrom fakepkg.impl import ANSWER as ANSWER\n'
        "from fakepkg.impl import helper as helper\n"
        "from fakepkg.impl import told as told\n"
    )
    (package / "impl.py").write_text(
        "ANSWER = 42\n\n\ndef helper():\n    return 1\n\n\n"
        'def told():\n    """Documented."""\n'
    )
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "fake.md").write_text(
        "fakepkg.ANSWER fakepkg.helper fakepkg.told\n\n::: fakepkg.told\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    found = coverage.problems(tmp_path / "api", {"fakepkg": "fake.md"})
    assert sorted(found) == [
        "fakepkg.ANSWER has no '::: ...' entry in docs/api/*.md",
        "fakepkg.ANSWER has no docstring",
        "fakepkg.helper has no '::: ...' entry in docs/api/*.md",
        "fakepkg.helper has no docstring",
    ]


# ---------------------------------------------------------------------- links

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """Python-Markdown's toc slug: what mkdocs names a heading's anchor."""
    import unicodedata

    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.*?)\s*$", text, re.M)}


def _broken_links(page: Path) -> list[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+:", target):
            broken.append(f"{target}: an external link (the site builds offline)")
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.is_file():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading for #{anchor}")
    return broken


@pytest.mark.parametrize("page", MARKDOWN, ids=_rel)
def test_links_point_at_pages_and_headings_that_exist(page):
    assert _broken_links(page) == []


def test_the_link_check_finds_a_missing_page_and_anchor(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Some part\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#some-part) [gone](c.md) [bad](a.md#nope) ![x](i.png)\n")
    assert [b.split(":")[0] for b in _broken_links(page)] == [
        "c.md",
        "a.md#nope",
        "i.png",
    ]


# ------------------------------------------------------------------ the README


def test_readme_is_a_landing_page_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    install = "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
    for command in (
        f"{install} && .venv/bin/python experiments/train.py",
        f"{install} && .venv/bin/python -m pytest -q",
    ):
        assert f"```bash\n{command}\n```" in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"{install} && .venv/bin/python -m pytest -q\n" in ci  # "verbatim" there
    assert "mkdocs build --strict" in text and "mkdocs serve" in text
    linked = {m.group(1) for m in LINK.finditer(text) if m.group(1)}
    for page in (
        "docs/index.md",
        "docs/tutorials/backprop-by-hand.md",
        "docs/api/index.md",
    ):
        assert page in linked


def test_every_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    listed = set(
        re.findall(r":\s+([\w/.-]+\.md)\s*$|^\s+-\s+([\w/.-]+\.md)\s*$", nav, re.M)
    )
    listed = {a or b for a, b in listed}
    missing = [
        _rel(p) for p in DOCS.rglob("*.md") if str(p.relative_to(DOCS)) not in listed
    ]
    assert missing == []


# --------------------------------------------------------------------- figures


def test_figures_script_runs(tmp_path):
    """Every figure is committed, and the script draws them (small settings). The
    main job's deltas.png and grad_flow.png are left out here (a training run):
    the script copies them from `experiments/train.py --layer-stats`, whose plot
    files tests/test_cli.py checks, and plot_deltas and plot_grad_flow, which
    tests/test_trace.py checks."""
    script = (DOCS / "figures" / "make_figures.py").read_text()
    names = ast.literal_eval(
        re.search(r"^FIGURES = (\(.*?\))$", script, re.M | re.S)[1]
    )
    for name in names:
        assert (DOCS / "figures" / f"{name}.png").is_file(), f"{name}.png not committed"
    drawn = [n for n in names if n not in ("deltas", "grad_flow")]
    proc = subprocess.run(
        [sys.executable, str(DOCS / "figures" / "make_figures.py"), "--quick"]
        + ["--out", str(tmp_path), "--only", *drawn],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in drawn:
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


# ------------------------------------------------------------ the strict build


def test_strict_build_fails_on_each_problem_and_fetches_nothing(tmp_path):
    """A small site with this repo's configuration: the strict build fails on a
    public name without an entry (the API coverage hook), on a broken link and on
    an API entry that names nothing; a clean one builds, and its pages load
    nothing from another host."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    site = tmp_path / "project"
    (site / "docs" / "api").mkdir(parents=True)
    shutil.copy(DOCS / "api_coverage.py", site / "docs" / "api_coverage.py")
    shutil.copy(DOCS / "api" / "ops.md", site / "docs" / "api" / "ops.md")
    config = (ROOT / "mkdocs.yml").read_text().split("\nnav:")[0]
    config = config.replace("paths: [.]", f"paths: [{ROOT}]")
    no_hook = config.replace("hooks:\n  - docs/api_coverage.py\n", "")
    assert no_hook != config
    index = site / "docs" / "index.md"

    def build(config_text: str, index_text: str):
        (site / "mkdocs.yml").write_text(config_text + "\n")
        index.write_text(index_text)
        return subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict"],
            cwd=site,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )

    # The hook: this site documents funcnn.ops only, so every other name fails.
    proc = build(config, "# Home\n\n[API](api/ops.md)\n")
    assert proc.returncode != 0
    assert "API coverage: funcnn.rules.Rule has no '::: ...' entry" in proc.stderr
    assert "API coverage: funcnn.ops.conv2d" not in proc.stderr

    # Without the hook, and an API page that links nowhere else.
    (site / "docs" / "api" / "ops.md").write_text("# ops\n\n::: funcnn.ops.conv2d\n")
    last = site / "docs" / "zz.md"  # read after index.md, so both are reported
    last.write_text("# Last\n\n::: funcnn.ops.no_such_op\n")
    proc = build(no_hook, "# Home\n\n[gone](nowhere.md) [API](api/ops.md) [z](zz.md)\n")
    assert proc.returncode != 0
    assert "nowhere.md" in proc.stderr and "funcnn.ops.no_such_op" in proc.stderr

    last.unlink()
    proc = build(no_hook, "# Home\n\n[API](api/ops.md)\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for html in (site / "site").rglob("*.html"):
        text = html.read_text()
        remote = re.findall(r'<(?:script|img)[^>]+src="(https?:[^"]+)"', text)
        remote += re.findall(r'<link[^>]+href="(https?:[^"]+)"', text)
        assert remote == [], (html, remote)
