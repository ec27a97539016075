"""End to end in a real browser: JupyterLab on localhost runs a notebook holding a TuningPanel; headless Chromium
(Debian's `chromium`, driven by Playwright for Python) moves the strength slider, presses Preview and waits for the
grid image to change. Skips with a reason where Chromium or Playwright is missing (`.ci/run` installs Chromium).

Set SYNTHKIT_SAVE_SCREENSHOT=1 to also copy the screenshot to tests/artifacts/browser_panel.png."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get('SYNTHKIT_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
TOKEN = 'synthkit-browser-test'

# The notebook the browser runs: a tiny synthetic dataset, a toy generator (no diffusion model, nothing downloaded).
CELLS = [
    '''import numpy as np, tempfile, time
from pathlib import Path
from synthkit.images import save_image
from synthkit.data.items import Item, Dataset
from synthkit.generators import Generator
from synthkit.tuning import TuningPanel

class NoiseGenerator(Generator):
    name, knobs, delay = 'noise', frozenset({'strength', 'seed'}), 0.0
    def _run(self, x, boxes, cls, params, seeds):
        time.sleep(self.delay * len(seeds))   # stands in for a slow diffusion model
        return [np.clip(x + np.random.default_rng(s).normal(0, params.strength / 2, x.shape), 0, 1) for s in seeds]

rng, items, folder = np.random.default_rng(0), [], Path(tempfile.mkdtemp())
for i in range(2):
    a = rng.gamma(2.0, 12.0, (64, 64)).clip(0, 255)
    a[20:26, 18:34] += 150; a[40:46, 36:50] += 150
    items.append(Item(save_image(a.clip(0, 255).astype(np.uint8), folder / f'chip{i}.png'), 64, 64,
                      [[18, 20, 34, 26], [36, 40, 50, 46]], [0, 0], f'chip{i}'))
ds = Dataset(items, ['ship'], root=folder)''',
    '''panel = TuningPanel(ds, NoiseGenerator(), n=3, params=__import__('synthkit.generators').generators.GenParams(strength=0.3))
panel.preview(); panel.wait()   # a first grid at strength 0.3
panel.generator.delay = 1.0     # from now on 1 s per output: the kernel must stay free meanwhile
panel''',
    "print(f'kernel answered: strength={panel.w_strength.value:.2f} busy={panel.busy}')",
    '''import synthkit.grid.config as E
from synthkit.casestudy_panel import CaseStudyPanel

def fake_run_grid(dataset, config, out, *, progress=True, on_result=None, should_stop=None, **kw):
    "Stands in for the YOLO grid: one made-up row per planned run, 0.2 s each."
    rows = []
    for spec in E.plan(config):
        if should_stop and should_stop(): break
        time.sleep(0.2)
        rows.append(dict(split=spec.split, condition=spec.condition, seed=spec.seed, map50=0.4 + 0.04 * (len(rows) % 5)))
        if on_result: on_result(rows[-1])
    return rows

import json, synthkit.casestudy as C
def fake_case_study(preset, data, generator, out, *, progress=True, on_result=None, should_stop=None, **ov):
    "Stands in for synthkit.casestudy.case_study (what the panel's Run calls): the fake grid, results.json, a report path."
    config, _ = C.resolve(preset, **{k: v for k, v in ov.items() if not k.startswith('sim_')})
    rows = fake_run_grid(None, config, out, on_result=on_result, should_stop=should_stop)
    Path(out).mkdir(parents=True, exist_ok=True); (Path(out) / 'results.json').write_text(json.dumps(rows))
    return Path(out) / 'report.md'

C.case_study = fake_case_study
study = CaseStudyPanel(out=folder / 'cs', data=str(folder), seeds=(0,))
study''',
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _write_notebook(path: Path):
    nb = dict(nbformat=4, nbformat_minor=5, metadata=dict(kernelspec=dict(name='python3', display_name='Python 3', language='python')),
              cells=[dict(cell_type='code', id=f'c{i}', metadata={}, execution_count=None, outputs=[], source=src)
                     for i, src in enumerate(CELLS)])
    path.write_text(json.dumps(nb, indent=1))


@pytest.fixture
def lab(tmp_path):
    "JupyterLab on a free localhost port with temp config/data/runtime dirs; stopped in the finalizer."
    if not Path(CHROMIUM).exists():
        pytest.skip(f'Chromium not found at {CHROMIUM} (apt-get install chromium, as .ci/run does)')
    pytest.importorskip('playwright.sync_api', reason='playwright for Python is not installed (pip install playwright)')
    jupyter = Path(sys.executable).parent / 'jupyter'
    if not jupyter.exists(): pytest.skip(f'{jupyter} not found (install jupyterlab)')
    nbdir = tmp_path / 'notebooks'; nbdir.mkdir()
    _write_notebook(nbdir / 'panel.ipynb')
    news = tmp_path / 'settings' / '@jupyterlab' / 'apputils-extension' / 'notification.jupyterlab-settings'
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))  # no "get news?" toast, no network
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path / 'rt'), JUPYTER_CONFIG_DIR=str(tmp_path / 'cfg'),
               JUPYTER_DATA_DIR=str(tmp_path / 'data'), JUPYTERLAB_SETTINGS_DIR=str(tmp_path / 'settings'),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / 'ws'), IPYTHONDIR=str(tmp_path / 'ipython'),
               HF_HUB_OFFLINE='1', YOLO_OFFLINE='true', PYTHONPATH=str(ROOT),
               PATH=f'{Path(sys.executable).parent}{os.pathsep}{os.environ.get("PATH", "")}')
    port = _free_port()
    log = open(tmp_path / 'jupyterlab.log', 'w')
    proc = subprocess.Popen([str(jupyter), 'lab', '--no-browser', f'--port={port}', '--ServerApp.port_retries=0',
                             f'--IdentityProvider.token={TOKEN}', '--ServerApp.ip=127.0.0.1', f'--notebook-dir={nbdir}',
                             '--LabApp.news_url=', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
                             '--LabApp.expose_app_in_browser=True', '--LabApp.extension_manager=readonly']
                            + (['--allow-root'] if hasattr(os, 'geteuid') and os.geteuid() == 0 else []),
                            cwd=nbdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f'http://127.0.0.1:{port}'
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f'jupyter lab exited ({proc.returncode}): {(tmp_path / "jupyterlab.log").read_text()[-2000:]}')
            try:
                urllib.request.urlopen(f'{url}/api/status?token={TOKEN}', timeout=2); break
            except OSError: time.sleep(0.2)
        else: raise RuntimeError('jupyter lab did not answer within 60 s')
        yield url
    finally:
        proc.terminate()
        try: proc.wait(15)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(5)
        log.close()


def _accept_kernel_dialog(page, wait_ms: int = 1500):
    "Press 'Select' on a 'Select Kernel' dialog if one shows up within `wait_ms`."
    try: page.wait_for_selector('.jp-Dialog', timeout=wait_ms)
    except Exception: return
    if 'Kernel' in page.inner_text('.jp-Dialog'):
        page.click('.jp-Dialog .jp-mod-accept')
        page.wait_for_selector('.jp-Dialog', state='detached')


CAPTION = "const cap = document.querySelector('.synthkit-grid-caption')?.innerText || ''"


def _run_cell(page, index: int) -> str:
    "Run cell `index` as a user would (select it, Shift+Enter); wait for it to finish; its output text."
    prompt = page.locator('.jp-Notebook .jp-Cell').nth(index).locator('.jp-InputPrompt')
    before = prompt.inner_text()
    prompt.click()
    page.keyboard.press('Shift+Enter')
    page.wait_for_function("([el, b]) => el.innerText !== b && !el.innerText.includes('*')", arg=[prompt.element_handle(), before])
    return page.locator('.jp-Notebook .jp-Cell').nth(index).locator('.jp-OutputArea').inner_text()


def _grid_src(page) -> str:
    return page.eval_on_selector('.synthkit-grid', 'e => e.src || ""')


def test_tuning_panel_in_jupyterlab(lab, tmp_path):
    from playwright.sync_api import sync_playwright
    shot = tmp_path / 'browser_panel.png'
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={'width': 1300, 'height': 1100})
            console = []
            page.on('console', lambda m: console.append(f'{m.type}: {m.text}') if m.type in ('error', 'warning') else None)
            page.set_default_timeout(int(os.environ.get('SYNTHKIT_BROWSER_TIMEOUT_MS', 60_000)))
            page.goto(f'{lab}/lab/tree/panel.ipynb?token={TOKEN}')
            page.wait_for_selector('.jp-Notebook .jp-Cell')
            page.wait_for_function("() => window.jupyterapp && document.querySelector('.jp-Notebook')")
            # JupyterLab may ask which kernel to use: take the notebook's own (Python 3)
            page.wait_for_function("() => document.querySelector('.jp-Dialog') || "
                                   "/Idle/.test(document.querySelector('.jp-StatusBar-Widget, #jp-main-statusbar')?.innerText || '')")
            _accept_kernel_dialog(page)
            # Run > Run All Cells, through the menu bar as a user would
            page.locator('.lm-MenuBar-item', has_text='Run').first.click()
            page.locator('.lm-Menu-item', has_text='Run All Cells').first.click()
            _accept_kernel_dialog(page)

            panel = page.locator('.synthkit-tuning-panel')
            panel.wait_for()
            page.wait_for_function(f"() => {{ {CAPTION}; const g = document.querySelector('.synthkit-grid'); "
                                   "return g && cap.includes('3/3') && g.naturalWidth > 0 }")
            before = _grid_src(page)
            assert 'strength 0.3 ' in panel.locator('.synthkit-grid-caption').inner_text()

            # move the strength slider with the keyboard: 0.30 -> 0.45 (step 0.05)
            slider = panel.locator('.widget-hslider', has=page.locator('label', has_text='strength'))
            readout = slider.locator('.widget-readout')
            assert readout.inner_text().strip() == '0.30'
            slider.locator('.noUi-handle').first.focus()
            for _ in range(3): page.keyboard.press('ArrowRight')
            page.wait_for_function("el => el.innerText.trim() === '0.45'", arg=readout.element_handle())
            # the kernel has it too (the front end may hold back slider updates while one is unacknowledged)
            for _ in range(20):
                if 'strength=0.45' in _run_cell(page, 2): break
            else: raise AssertionError('the kernel never saw strength 0.45')

            panel.locator('button', has_text='Preview').click()
            # the notebook is not frozen: another cell runs while the panel generates (3 outputs, 1 s each)
            assert 'busy=True' in _run_cell(page, 2)
            page.wait_for_function(f"before => {{ {CAPTION}; const g = document.querySelector('.synthkit-grid'); "
                                   "return g.src !== before && cap.includes('strength 0.45 ') "
                                   "&& cap.includes('3/3') && g.naturalWidth > 0 }", arg=before)
            panel.locator('.widget-html', has_text='variations: 3 outputs in').wait_for()
            after = _grid_src(page)
            assert after != before
            size = page.eval_on_selector('.synthkit-grid', 'e => [e.naturalWidth, e.naturalHeight]')
            assert size[0] > 3 * size[1], size  # one row: source + 3 variations
            panel.screenshot(path=str(shot))

            # the case-study panel: Run fills the table and the plot as (fake) runs finish
            study = page.locator('.synthkit-casestudy-panel')
            study.scroll_into_view_if_needed()
            study.locator('button', has_text='Run').click()
            page.wait_for_function("() => document.querySelectorAll('.synthkit-casestudy-panel table.synthkit-results tr').length === 11 "
                                   "&& /10 runs in/.test(document.querySelector('.synthkit-casestudy-panel').innerText)")
            assert study.locator('img').evaluate('e => e.naturalWidth') > 100
            study.screenshot(path=str(tmp_path / 'browser_casestudy.png'))
        except Exception:
            page.screenshot(path=str(tmp_path / 'failure.png'))  # what the browser showed, for the failure report
            for e in page.query_selector_all('.jupyter-widgets-error-widget'):
                e.click(); console.append('widget error: ' + e.inner_text()[:1500])
            print('browser console:', *console[-30:], sep='\n  ')
            print('screenshot of the failure:', tmp_path / 'failure.png', '\nserver log:', tmp_path / 'jupyterlab.log')
            raise
        finally:
            browser.close()
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get('SYNTHKIT_SAVE_SCREENSHOT'):
        dest = ROOT / 'tests' / 'artifacts'
        dest.mkdir(parents=True, exist_ok=True)
        for f in (shot, tmp_path / 'browser_casestudy.png'): shutil.copy(f, dest / f.name)
