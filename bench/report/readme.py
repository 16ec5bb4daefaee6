"""Generated blocks in Markdown files: numbers that come from a committed run, never typed.

A block is delimited by two HTML comments (invisible when rendered)::

    <!-- metabench:headline results/20261128-cpu-all -->
    ...the output of bench.report.tables.headline_markdown(results/20261128-cpu-all)...
    <!-- /metabench:headline -->

An opening comment may name the sections it holds after the run folder, ``timing`` or
``accuracy`` (default both): ``<!-- metabench:headline results/RUN timing -->``, so a
README can take its step times from a run with repeated timing processes and its
accuracies from a run that trained. ``answer`` is the README's first table
(``bench.report.answer``): ``<!-- metabench:headline results/TIMING answer results/ACCURACY -->``
takes its step times from the first run and its accuracies from the second.

``metabench readme`` rewrites every block from the run folder its opening comment names;
``metabench readme --check`` exits 1 when a block differs from what the run would generate
(the test suite runs the same check, so hand-edited or stale numbers fail CI).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import MetabenchError

BLOCK = re.compile(r"(<!-- metabench:headline (?P<run>\S+)(?: (?P<sections>[a-z,]+))?(?: (?P<second>\S+))? -->\n)"
                   r"(?P<body>.*?)(<!-- /metabench:headline -->)", re.DOTALL)


@dataclass(frozen=True)
class Block:
    run: str          # the run folder, relative to the Markdown file's repository root
    body: str         # the text between the two comments, as it stands in the file
    expected: str     # what the run generates now

    @property
    def stale(self) -> bool:
        return self.body != self.expected


def generate(run_dir: Path, sections: str | None = None, second: Path | None = None) -> str:
    """The body of a headline block for ``run_dir``: the run's generated tables (``sections``:
    "timing", "accuracy", or both, comma-separated; None: both). Deterministic: no
    timestamps, no absolute paths."""
    from bench.report.tables import HEADLINE_SECTIONS, headline_markdown

    for d in (run_dir, second):
        if d is not None and not (d / "manifest.json").is_file():
            raise MetabenchError(f"{d}: not a metabench run (no manifest.json); "
                                 "name a folder under results/ in the block's opening comment")
    if sections == "answer":
        from bench.report.answer import answer_markdown

        return f"\n{answer_markdown(run_dir, second).strip()}\n\n"
    wanted = tuple(sections.split(",")) if sections else HEADLINE_SECTIONS
    unknown = [w for w in wanted if w not in HEADLINE_SECTIONS]
    if unknown:
        raise MetabenchError(f"headline block of {run_dir}: unknown section {unknown[0]!r}; "
                             f"allowed: {', '.join(HEADLINE_SECTIONS)}")
    return f"\n{headline_markdown(run_dir, sections=wanted).strip()}\n\n"


def repository_root(path: Path) -> Path:
    """The folder above ``path`` that holds ``pyproject.toml`` (the blocks name run folders
    from there, ``results/<run>``, in README.md and docs/findings.md alike), else its folder."""
    folder = Path(path).resolve().parent
    return next((d for d in (folder, *folder.parents) if (d / "pyproject.toml").is_file()), folder)


def blocks(path: Path, root: Path | None = None) -> list[Block]:
    """Every generated block of the Markdown file ``path``; run folders are resolved
    against ``root`` (default: the repository's root, ``repository_root``)."""
    root = root or repository_root(path)
    text = path.read_text(encoding="utf-8")
    return [Block(m["run"], m["body"], generate(root / m["run"], m["sections"], _second(root, m)))
            for m in BLOCK.finditer(text)]


def _second(root: Path, m: re.Match) -> Path | None:
    return root / m["second"] if m["second"] else None


def update(path: Path, root: Path | None = None) -> int:
    """Rewrite every block of ``path`` from its run; returns how many changed."""
    root = root or repository_root(path)
    text = path.read_text(encoding="utf-8")
    changed = 0

    def regenerate(m: re.Match) -> str:
        nonlocal changed
        body = generate(root / m["run"], m["sections"], _second(root, m))
        changed += body != m["body"]
        return m.group(1) + body + m.group(6)

    new = BLOCK.sub(regenerate, text)
    if changed:
        path.write_text(new, encoding="utf-8")
    return changed
