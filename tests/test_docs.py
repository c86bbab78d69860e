"""The repository documents itself: every relative link in README.md and docs/ resolves, every
`docs/<page>.md` named in the code exists, and nothing points outside the repository."""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(os.path.relpath(p, REPO)
                               for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"),
                                                  recursive=True))
CODE_DIRS = ("diffusion", "experiments", "configs", "benchmarks", "tests")
_LINK = re.compile(r"\]\(([^)\s]+)\)")  # markdown links and images: [text](target)


def _code_files():
  for d in CODE_DIRS:
    yield from glob.glob(os.path.join(REPO, d, "**", "*.py"), recursive=True)


def relative_links(text: str):
  """Targets of the markdown links in ``text`` that are paths (no URL, no pure anchor)."""
  out = []
  for target in _LINK.findall(text):
    path = target.split("#", 1)[0]
    if path and not re.match(r"^[a-z]+:", path):
      out.append(path)
  return out


def test_relative_links_finds_paths_and_skips_urls():
  text = "[a](dir/x.md) ![b](img/y.png) [c](https://e.org/z) [d](#anchor) [e](f.md#sec)"
  assert relative_links(text) == ["dir/x.md", "img/y.png", "f.md"]


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page):
  path = os.path.join(REPO, page)
  with open(path) as f:
    links = relative_links(f.read())
  missing = [l for l in links if not os.path.exists(os.path.join(os.path.dirname(path), l))]
  assert not missing, f"{page}: links that do not resolve: {missing}"


def test_docs_pages_named_in_the_code_exist():
  missing = set()
  for py in _code_files():
    with open(py) as f:
      for name in re.findall(r"\bdocs/[\w./-]+\.md\b", f.read()):
        if not os.path.exists(os.path.join(REPO, name)):
          missing.add(f"{os.path.relpath(py, REPO)}: {name}")
  assert not missing, sorted(missing)


def test_nothing_points_outside_the_repository():
  needle = "../" + "shared"  # split so that this file does not match itself
  hits = []
  for p in [os.path.join(REPO, pg) for pg in PAGES] + list(_code_files()):
    with open(p) as f:
      if needle in f.read():
        hits.append(os.path.relpath(p, REPO))
  assert not hits, f"files referring to {needle}: {hits}"
