"""Write README.md from nbs/index.ipynb (Quarto, which nbdev_readme needs, can't be installed here).

`python tools/make_readme.py` writes it; `--check` exits 1 when README.md is out of date.
"""
import sys
from pathlib import Path

import nbformat
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
HEADER = '<!-- Made from nbs/index.ipynb by tools/make_readme.py: edit the notebook, then run `make sync`. -->\n\n'


def render() -> str:
    nb = nbformat.read(ROOT/'nbs'/'index.ipynb', as_version=4)
    nb.cells = [c for c in nb.cells if not c.source.lstrip().startswith('#|')]
    body, _ = MarkdownExporter(exclude_output_prompt=True, exclude_input_prompt=True).from_notebook_node(nb)
    return HEADER + body.strip() + '\n'


if __name__ == '__main__':
    text, readme = render(), ROOT/'README.md'
    if '--check' in sys.argv[1:]:
        if not readme.exists() or readme.read_text(encoding='utf-8') != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run `make sync`')
    else:
        readme.write_text(text, encoding='utf-8')
