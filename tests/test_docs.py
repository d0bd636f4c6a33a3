"""The README and docs/ hold together: links and anchors resolve, `make` targets exist,
images are there, and the README opens with the two commands and keeps its attributions.

Pure file reading: no network (external links are only checked to be well-formed), no
processes, well under a second.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
README_MAX_LINES = 260
IMAGE_MAX_BYTES = 300 * 1024

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target), an optional "title" after the target.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(\s*<?([^)\s>]+)>?[^)]*\)|<img\s[^>]*src=\"([^\"]+)\"")
# `make [VAR=value ...] target`: the target is the first word that is not an assignment
# or an option.
MAKE = re.compile(r"(?<![\w/.$(-])make((?:\s+(?:-\S+|[A-Za-z_][A-Za-z0-9_]*=\S*))*)\s+"
                  r"([a-z][A-Za-z0-9_.-]*)")
# Words that only the project's builders understand.
INSIDER_WORDS = ("the seed", "seed's", "issue's targets", "lent gpu", "device tool",
                 "this workplace", "carry=")


def split_code(text: str) -> tuple[list[str], list[str]]:
    """The page's lines outside fenced code blocks (inline code blanked), and its code:
    fenced blocks' lines and inline code spans."""
    prose, code = [], []
    fenced = False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            prose.append("")
            continue
        if fenced:
            code.append(line)
            prose.append("")
        else:
            code += [m.group(2) for m in INLINE_CODE.finditer(line)]
            prose.append(INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line))
    return prose, code


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation but - and _
    dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link: its text
    text = text.replace("`", "").lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LNM")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page, with GitHub's -1, -2 for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    raw = page.read_text(encoding="utf-8").splitlines()
    for line, original in zip(prose, raw):
        match = HEADING.match(line) and HEADING.match(original)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    """The targets of the page's Markdown links and images, outside code."""
    prose, _ = split_code(page.read_text(encoding="utf-8"))
    targets = []
    for line in prose:
        targets += [m.group(1) for m in LINK.finditer(line)]
        targets += [m.group(2) for m in IMAGE.finditer(line) if m.group(2)]
    return targets


def link_problem(page: Path, target: str) -> str | None:
    """Why a link target is broken, or None."""
    parts = urlsplit(target)
    if parts.scheme in ("http", "https"):
        if not parts.netloc or "." not in parts.netloc or " " in target:
            return f"malformed URL {target!r}"
        return None
    if parts.scheme or target.startswith("//"):
        return f"{target!r}: only relative links and http(s) URLs are expected"
    path, anchor = unquote(parts.path), parts.fragment
    file = page if not path else (page.parent / path).resolve()
    if ROOT not in (file, *file.parents):
        return f"{target!r} points outside the repository"
    if not file.exists():
        return f"{target!r}: {file.relative_to(ROOT)} does not exist"
    if anchor:
        if file.suffix != ".md":
            return f"{target!r}: an anchor into a file that is not Markdown"
        if anchor not in anchors(file):
            return (f"{target!r}: no heading of {file.relative_to(ROOT)} has the anchor "
                    f"#{anchor}")
    return None


def make_targets() -> set[str]:
    """The Makefile's targets: its rules' names and .PHONY's."""
    text = (ROOT / "Makefile").read_text(encoding="utf-8").replace("\\\n", " ")
    targets = set()
    for line in text.splitlines():
        if line.startswith(("\t", "#")) or ":" not in line:
            continue
        head, _, rest = line.partition(":")
        if rest.startswith("=") or "=" in head:  # an assignment, := or ::=
            continue
        names = head.split()
        if names == [".PHONY"]:
            targets.update(rest.split())
        else:
            targets.update(name for name in names if "$" not in name)
    return targets


def make_commands(page: Path) -> list[str]:
    """The targets of the `make ...` commands in the page's code."""
    _, code = split_code(page.read_text(encoding="utf-8"))
    return [m.group(2) for snippet in code for m in MAKE.finditer(snippet)]


def rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_relative_links_and_anchors_resolve(page):
    problems = [p for target in links(page) if (p := link_problem(page, target))]
    assert not problems, f"{rel(page)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_make_targets_named_exist(page):
    targets = make_targets()
    missing = sorted({t for t in make_commands(page) if t not in targets})
    assert not missing, f"{rel(page)} names make targets the Makefile lacks: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=rel)
def test_images_exist_and_are_small(page):
    text = "\n".join(split_code(page.read_text(encoding="utf-8"))[0])
    images = [m.group(1) or m.group(2) for m in IMAGE.finditer(text)]
    for image in images:
        file = (page.parent / unquote(urlsplit(image).path)).resolve()
        assert file.is_file(), f"{rel(page)}: image {image!r} does not exist"
        assert file.stat().st_size < IMAGE_MAX_BYTES, \
            f"{rel(page)}: image {image!r} is {file.stat().st_size // 1024} KB"


def test_readme_is_short_and_opens_with_the_two_commands():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    start = next(i for i, line in enumerate(lines) if FENCE.match(line))
    end = next(i for i in range(start + 1, len(lines)) if FENCE.match(lines[i]))
    first_block = "\n".join(lines[start + 1:end])
    assert re.search(r"^make demo\b", first_block, re.M), "the first code block: make demo"
    assert re.search(r"^make test\b", first_block, re.M), "the first code block: make test"
    first_section = next(i for i, line in enumerate(lines) if line.startswith("## "))
    assert start < first_section, "the two commands come before the first section"


def test_readme_keeps_the_attributions():
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "MNIST" in text and "CC BY-SA 3.0" in text
    assert "Yann LeCun, Corinna Cortes and Christopher J.C. Burges" in text
    assert "grass.png" in text and "linolafett" in text and "CC0" in text


def test_readme_links_every_docs_page():
    linked = {(README.parent / unquote(urlsplit(t).path)).resolve()
              for t in links(README) if not urlsplit(t).scheme}
    unlinked = [rel(page) for page in DOCS if page.resolve() not in linked]
    assert not unlinked, f"README.md does not link {unlinked}"


def test_readme_speaks_to_newcomers():
    text = " ".join(README.read_text(encoding="utf-8").lower().split())
    found = [word for word in INSIDER_WORDS if word in text]
    assert not found, f"README.md uses words only its builders understand: {found}"


def test_docs_pages_open_with_a_title_and_a_summary():
    for page in DOCS:
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines[0].startswith("# "), f"{rel(page)}: no title on its first line"
        assert len(lines) > 2 and not lines[1].strip() and lines[2].strip() \
            and not lines[2].startswith(("#", "```", "|")), \
            f"{rel(page)}: the title is not followed by a summary line"


def test_the_checks_catch_what_they_should(tmp_path):
    """The helpers themselves: GitHub's slugs, and a broken link, anchor and target."""
    assert slug("Training (`anogan-train train`)") == "training-anogan-train-train"
    assert slug("Data and attribution") == "data-and-attribution"
    assert slug("Serving: limits, TLS & tokens") == "serving-limits-tls--tokens"
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## A B\n\n## A B\n", encoding="utf-8")
    assert anchors(page) == {"title", "a-b", "a-b-1"}
    assert link_problem(README, "docs/no-such-page.md")
    assert link_problem(README, "README.md#no-such-heading")
    assert link_problem(README, "http://")
    assert link_problem(README, "../outside.md")
    assert link_problem(README, "README.md#data-and-attribution") is None
    assert "demo" in make_targets() and "test" in make_targets()
    make_page = tmp_path / "make.md"
    make_page.write_text("Run `make demo HOST=0.0.0.0` or `make PORT=1 serve`, then\n"
                         "```sh\nmake no-such-target   # comment\ncmake -S x\n```\n",
                         encoding="utf-8")
    assert make_commands(make_page) == ["demo", "serve", "no-such-target"]
