"""The docs rot loudly: size and width of every Markdown file, every command shown in the
README and docs/ parses with the real argument parser, every relative link resolves, and
the README's numbers are generated from a committed run.

Commit 538bff8 buried the README under 197,686 lines of one repeated paragraph and nothing
noticed for three commits; ``test_a_corrupted_readme_is_rejected`` plants that corruption
in a copy and checks that these checks catch it.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from bench.cli.main import build_parser
from bench.report import readme

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".nox", ".venv", "build", "dist", "node_modules"}
MAX_BYTES = 100_000
# Hand-written prose wraps at ~90 columns; generated run summaries carry long one-line
# bullets (a command, a verdict), so they get a looser bound. Tables and code are exempt.
MAX_WIDTH = {"hand": 100, "generated": 400}
HAND_WRITTEN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Upper-case words in a shown command are placeholders; these stand in for them.
PLACEHOLDER = re.compile(r"^[A-Z][A-Z_]*(\.\.\.)?$")
PLACEHOLDER_VALUES = {"N": "1", "PCT": "5"}


def tracked(pattern: str) -> list[Path] | None:
    """Files git tracks under the repository matching ``pattern``; None outside a git clone.
    The tests read the project's own files, never what a user's run just added to results/
    (the README's order, a smoke run then the tests, must pass: issue 22)."""
    import subprocess

    try:
        out = subprocess.run(["git", "ls-files", "-z", "--", pattern], cwd=REPO, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return sorted(REPO / p for p in out.stdout.decode().split("\0") if p)


def markdown_files() -> list[Path]:
    files = tracked("*.md")
    if files is None:
        files = list(REPO.rglob("*.md"))
    return sorted(p for p in files if not SKIP_DIRS & set(p.relative_to(REPO).parts) and p.exists())


def committed_runs() -> list[str] | None:
    """The run folders under results/ that git tracks (their manifest.json), by name."""
    manifests = tracked("results/*/manifest.json")
    return None if manifests is None else sorted(p.parent.name for p in manifests)


def prose_lines(text: str):
    """(line number, line) of every line outside fenced/indented code and tables."""
    fenced = False
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    ") or line.lstrip().startswith("|"):
            continue
        yield i, line


# -- the checks (each returns a list of problems; empty means fine) -------------------------

def size_problems(path: Path) -> list[str]:
    n = path.stat().st_size
    return [f"{path.name}: {n} bytes, over {MAX_BYTES}: read it whole, it is likely corrupted"] if n > MAX_BYTES else []


def width_problems(path: Path, width: int) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [f"{path.name}:{i}: {len(line)} columns (limit {width})"
            for i, line in prose_lines(text) if len(line) > width]


def repetition_problems(path: Path, times: int = 3) -> list[str]:
    """A prose line of some length repeated many times is an edit gone wrong, not writing."""
    counts: dict[str, int] = {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        if len(line.strip()) >= 60:
            counts[line] = counts.get(line, 0) + 1
    return [f"{path.name}: a line repeats {n} times: {line[:60]!r}..." for line, n in counts.items() if n > times]


def shown_commands(text: str) -> list[str]:
    """Every ``metabench ...`` and ``nox ...`` command shown: lines of code blocks, and inline
    code spans (a span may wrap across lines of a paragraph)."""
    found = []
    fenced = False
    paragraph: list[str] = []
    for line in text.splitlines() + [""]:
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced or line.startswith("    "):
            code = line.strip().removeprefix("$ ")
            code = re.sub(r"\s+#.*$", "", code)   # a trailing comment
            found.append(code)
            continue
        if line.strip():
            paragraph.append(line.strip())
            continue
        found += re.findall(r"`([^`]+)`", " ".join(paragraph))
        paragraph = []
    return [c for c in found if re.match(r"(metabench|nox) ", c + " ")]


def nox_sessions() -> set[str]:
    tree = ast.parse((REPO / "noxfile.py").read_text())
    return {f.name for f in tree.body if isinstance(f, ast.FunctionDef)
            and any("session" in ast.unparse(d) for d in f.decorator_list)}


def _parse_metabench(argv: list[str]) -> str | None:
    argv = [PLACEHOLDER_VALUES.get(a.rstrip("."), "x") if PLACEHOLDER.match(a) else a for a in argv]
    try:
        build_parser().parse_args(argv)
    except SystemExit as e:
        return f"argparse rejects it (exit {e.code})" if e.code else None
    return None


def command_problem(command: str) -> str | None:
    """Why a shown command would not run as written, or None."""
    words = shlex.split(command)
    if words[0] == "metabench":
        problem = _parse_metabench(words[1:])
    else:
        rest = words[1:]
        if rest[:1] != ["-s"] or len(rest) < 2:
            return f"{command!r}: expected `nox -s SESSION`"
        if rest[1] not in nox_sessions():
            return f"{command!r}: no nox session {rest[1]!r} (sessions: {', '.join(sorted(nox_sessions()))})"
        # `nox -s bench -- ARGS` hands ARGS to `metabench run` (noxfile.py)
        problem = _parse_metabench(["run", *rest[3:]]) if rest[1] == "bench" and rest[2:3] == ["--"] else None
    return f"{command!r}: {problem}" if problem else None


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped,
    spaces to hyphens."""
    out = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"#+ (.*)", line):
            slug = re.sub(r"[^\w\- ]", "", m[1].strip().lower().replace("`", "")).replace(" ", "-")
            out.add(slug)
    return out


def link_problems(path: Path) -> list[str]:
    """Relative links that point nowhere: a missing file, or a heading anchor that the
    Markdown file it names does not have (sections moved between files break these)."""
    text = path.read_text(encoding="utf-8")
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # a URL
        file, _, anchor = target.partition("#")
        where = path if not file else path.parent / file
        if not where.exists():
            out.append(f"{path.name}: link to {target} points nowhere")
        elif anchor and where.suffix == ".md" and anchor not in anchors(where):
            out.append(f"{path.name}: link to {target}: no such heading")
    return out


# -- the checks applied to the repository ---------------------------------------------------

@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_markdown_file_is_sane_in_size_width_and_repetition(path):
    width = MAX_WIDTH["hand" if path in HAND_WRITTEN else "generated"]
    assert size_problems(path) + width_problems(path, width) + repetition_problems(path) == []


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=lambda p: p.name)
def test_every_command_shown_parses(path):
    commands = shown_commands(path.read_text(encoding="utf-8"))
    assert [p for p in map(command_problem, commands) if p] == []


def test_the_readme_shows_commands_and_the_checker_sees_them():
    commands = shown_commands((REPO / "README.md").read_text(encoding="utf-8"))
    assert "nox -s bench" in commands and "nox -s tests" in commands
    assert any(c.startswith("nox -s bench -- --profile smoke") for c in commands)


def test_a_wrong_command_is_caught():
    assert command_problem("metabench run --no-such-flag") is not None
    assert command_problem("metabench frobnicate") is not None
    assert command_problem("metabench run --profile fast") is not None    # not a choice
    assert command_problem("nox -s benchmark") is not None
    assert command_problem("nox -s bench -- --phases timing --threads two") is not None
    assert command_problem("metabench episodes SPEC --count N") is None     # placeholders
    assert command_problem("nox -s bench -- --profile smoke") is None


def test_every_run_flag_is_documented_in_the_cli_page():
    """docs/cli.md's flag list names every flag of ``metabench run`` (``--resume`` was missing)."""
    text = (REPO / "docs" / "cli.md").read_text(encoding="utf-8")
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    flags = [o for a in run._actions for o in a.option_strings if o.startswith("--") and o != "--help"]
    assert [f for f in flags if f"`{f}" not in text] == []


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=lambda p: p.name)
def test_every_relative_link_resolves(path):
    assert link_problems(path) == []


@pytest.mark.parametrize("name", ["README.md", "docs/findings.md"])
def test_readme_numbers_are_generated_from_a_committed_run(name):
    found = readme.blocks(REPO / name)  # run folders from the repository's root, as `metabench readme` reads them
    assert found, f"{name}'s results tables must be generated blocks (metabench readme)"
    for block in found:
        assert (REPO / block.run / "manifest.json").is_file()
        assert not block.stale, f"{name}'s block from {block.run} is stale: run `metabench readme {name}`"


README_MAX_LINES = 250
# A commit hash in prose (7 to 40 hex digits with a digit and a letter): history, which
# belongs in docs/findings.md or a run's notes, not in the README
HASH = re.compile(r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b")
HISTORY = ("since `", "used to ", "no longer", "until recently", "we changed", "was changed")


def test_the_readme_answers_first_and_stays_short():
    """Issue 25: at most 250 lines; the answer table (a generated block) inside the first
    40; no commit hashes and no history in its prose."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    head = "\n".join(lines[:40])
    assert re.search(r"<!-- metabench:headline \S+ answer", head) and "| workload |" in head
    prose = "\n".join(line for _, line in prose_lines(text))
    assert HASH.findall(prose) == []
    assert [h for h in HISTORY if h in prose.lower()] == []


def test_a_corrupted_readme_is_rejected(tmp_path):
    """Commit 538bff8's corruption: one paragraph inserted between every character."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    paragraph = ("Every target is met in every framework, and the three results of each cell fall within\n"
                 "each other's 95% CIs, except JAX FOMAML on Omniglot, 2.7 points under torch and TF.\n\n")
    corrupted = tmp_path / "README.md"
    corrupted.write_text(paragraph.join([""] + list(text[:2000]) + [""]) + text[2000:], encoding="utf-8")
    assert size_problems(corrupted) and repetition_problems(corrupted)
    # and a hand edit of a generated number
    body = readme.BLOCK.search(text)
    start, end = body.span("body")
    edited = tmp_path / "edited.md"
    edited.write_text(text[:start] + re.sub(r"\d\.\d\d", "9.99", text[start:end], count=1) + text[end:],
                      encoding="utf-8")
    assert any(b.stale for b in readme.blocks(edited, REPO))


def test_a_dead_link_is_caught(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n## How it `works`, then\n\nSee [the spec](docs/nowhere.md) and [home](https://example.org),"
                    " [here](#how-it-works-then), [gone](#moved-away) and [self](page.md#top).\n")
    assert link_problems(page) == ["page.md: link to docs/nowhere.md points nowhere",
                                   "page.md: link to #moved-away: no such heading"]


def test_the_results_index_is_generated_from_the_manifests():
    """results/README.md's index of committed runs is `metabench index`'s output, not typed."""
    from bench.report.report import index_block

    committed = (REPO / "results" / "README.md").read_text(encoding="utf-8")
    block = index_block(REPO / "results", runs=committed_runs())  # a user's own new runs are not committed
    assert block in committed, "results/README.md's index is stale: run `metabench index`"
