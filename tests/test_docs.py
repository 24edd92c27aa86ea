"""The documentation cannot drift: the Sphinx build is warning-free, and every ``python`` code
block of README.md and of the guide (docs/guide/*.md) runs.

A file's blocks run in order in one namespace (a later block may use an earlier one's names), in
a fresh interpreter whose working directory is a temporary folder, with the dataset mirror of the
suite. A failure names the file and the line of the block.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import minidl

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = str(Path(minidl.__file__).resolve().parents[1])  # the minidl under test
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

RUNNER = """
import json, sys
blocks = json.load(open(sys.argv[1]))
namespace = {"__name__": "__main__"}
for name, line, code in blocks:
    exec(compile(code, f"{name}, code block at line {line}", "exec"), namespace)
"""


def python_blocks(path):
    """``[(file name, line of the fence, code)]`` of the ```python blocks of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(path.name, text.count("\n", 0, match.start()) + 1, match.group(1))
            for match in FENCE.finditer(text)]


def documents_with_code():
    files = [ROOT / "README.md", *sorted((ROOT / "docs" / "guide").glob("*.md"))]
    return [path for path in files if python_blocks(path)]


def test_the_extractor_finds_the_blocks_it_should(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\na = 1\n```\n```bash\nls\n```\n\n```python\nb = a + 1\n```\n")
    assert python_blocks(page) == [("page.md", 2, "a = 1\n"), ("page.md", 9, "b = a + 1\n")]


@pytest.mark.parametrize("document", documents_with_code(), ids=lambda path: path.name)
def test_code_blocks_run(document, tmp_path, real_mirror):
    blocks = python_blocks(document)
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = dict(os.environ, MINIDL_DATA_MIRROR=real_mirror, MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    result = subprocess.run([sys.executable, "runner.py", "blocks.json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"a code block of {document.name} failed:\n{result.stderr[-3000:]}"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx", reason='building the docs needs Sphinx: pip install "minidl[docs]"')
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html")],
        capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "html" / "api" / "layers.html").exists()
