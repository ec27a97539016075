"""The case-study panel's logic without a browser: set widget values, press buttons, check what the grid was asked and what the panel shows."""
import dataclasses
import json
import sys
import threading
import time
import types
from pathlib import Path

import pytest

from synthkit.errors import SynthkitError
from synthkit import casestudy_panel
from synthkit.casestudy_panel import CaseStudyPanel


@dataclasses.dataclass
class FakeGridConfig:
    splits: list = dataclasses.field(default_factory=lambda: ['split_1', 'split_2'])
    conditions: list = dataclasses.field(default_factory=lambda: ['baseline', '+2', 'classic+2'])
    seeds: list = dataclasses.field(default_factory=lambda: [0, 1, 2])
    epochs: int = 1


@pytest.fixture
def fake_grid(monkeypatch):
    "Stand-ins for synthkit.casestudy.PRESETS and synthkit.grid's run_grid / plan (mechanics, not YOLO)."
    import synthkit.report   # the panel's plot is the report's: imported before the fakes, it binds the real grid helpers
    calls = dict(gate=threading.Semaphore(0), configs=[], started=0)

    def plan(config):
        return [(s, c, k) for s in config.splits for c in config.conditions for k in config.seeds]

    def run_grid(dataset, config, out, *, progress=True, on_result=None, should_stop=None):
        calls['configs'].append(config); calls['dataset'] = dataset
        rows = []
        for s, c, k in plan(config):
            if should_stop and should_stop(): break
            calls['started'] += 1
            assert calls['gate'].acquire(timeout=20)
            row = dict(split=s, condition=c, seed=k, map50=0.5 + 0.1 * config.conditions.index(c) + 0.01 * k)
            rows.append(row)
            if on_result: on_result(row)
        return rows

    # the panel counts the runs with synthkit.grid.config.plan; the fake case study calls grid.run_grid
    grid = types.ModuleType('synthkit.grid.config'); grid.run_grid, grid.plan, grid.GridConfig = run_grid, plan, FakeGridConfig
    cs = types.ModuleType('synthkit.casestudy'); cs.PRESETS = {'quick': FakeGridConfig(), 'standard': FakeGridConfig(epochs=30)}
    cs.resolve = lambda preset, **ov: (dataclasses.replace(cs.PRESETS[preset], **{k: tuple(v) for k, v in ov.items() if not k.startswith('sim_')}), {})

    def case_study(preset, data, generator, out, *, progress=True, on_result=None, should_stop=None, **ov):
        "What the panel's Run calls: the preset with the panel's overrides, the (fake) grid, results.json and a report."
        calls['case_study'] = dict(preset=preset, data=data, overrides=ov)
        config, _ = cs.resolve(preset, **ov)
        rows = grid.run_grid(data, config, out, progress=progress, on_result=on_result, should_stop=should_stop)
        Path(out).mkdir(parents=True, exist_ok=True); (Path(out) / 'results.json').write_text(json.dumps(rows))
        (Path(out) / 'report.md').write_text('# report\n')
        return Path(out) / 'report.md'
    cs.case_study = case_study
    monkeypatch.setitem(sys.modules, 'synthkit.grid.config', grid)
    monkeypatch.setitem(sys.modules, 'synthkit.casestudy', cs)
    import synthkit, synthkit.grid
    monkeypatch.setattr(synthkit.grid, 'config', grid, raising=False)
    monkeypatch.setattr(synthkit, 'casestudy', cs, raising=False)
    calls['grid'] = grid
    return calls


def test_case_study_panel_runs_grid_and_fills_table_and_plot(fake_grid, ds, tmp_path, monkeypatch):
    p = CaseStudyPanel(out=tmp_path / 'cs', data=str(ds.root))
    assert list(p.w_preset.options) == ['quick', 'standard'] and p.w_source.value == 'folder'
    assert list(p.w_conditions.options) == ['baseline', '+2', 'classic+2']
    p.w_preset.value = 'standard'
    p.w_splits.value = ('split_1',)
    p.w_conditions.value = ('baseline', '+2')
    p.w_seeds.value = '0, 1'
    for _ in range(4): fake_grid['gate'].release()
    p.b_run.click()
    rows = p.wait(timeout=30)
    cfg = fake_grid['configs'][0]
    assert (cfg.splits, cfg.conditions, cfg.seeds, cfg.epochs) == (('split_1',), ('baseline', '+2'), (0, 1), 30)
    assert len(rows) == 4 and p.w_progress.value == p.w_progress.max == 4 and p.w_progress.bar_style == 'success'
    assert p.w_table.value.count('<tr>') == 5 and '+2' in p.w_table.value and '0.610' in p.w_table.value
    assert bytes(p.w_plot.value).startswith(b'\x89PNG') and not p.b_run.disabled and p.b_stop.disabled
    call = fake_grid['case_study']    # one library call, the same as `synthkit case-study --preset standard --set ...`
    assert call['preset'] == 'standard' and Path(call['data']) == Path(ds.root) and call['overrides'] == dict(splits=('split_1',), conditions=('baseline', '+2'), seeds=(0, 1))
    assert p.report == tmp_path / 'cs' / 'report.md' and p.report.is_file() and 'report.md' in p.w_status.value


def calls_started(calls): return calls['started']


def test_case_study_stop_ends_after_run_in_flight(fake_grid, ds, tmp_path, monkeypatch):
    p = CaseStudyPanel(out=tmp_path / 'cs')
    p.w_seeds.value = '0'
    p.b_run.click()                          # 2 splits x 3 conditions x 1 seed = 6 runs
    assert p.busy and p.w_progress.max == 6 and p.b_run.disabled
    fake_grid['gate'].release()              # run 1 finishes
    for _ in range(500):
        if calls_started(fake_grid) == 2: break
        time.sleep(0.02)
    p.b_stop.click()                         # run 2 is in flight: it finishes, then the grid stops
    fake_grid['gate'].release()
    rows = p.wait(timeout=20)
    assert len(rows) == 2 and 'stopped after 2 of 6' in p.w_status.value and p.w_progress.bar_style == 'warning'
    with pytest.raises(SynthkitError, match="seeds 'x' is not a comma-separated list"):
        p.w_seeds.value = 'x'; p.config()


def test_case_study_panel_errors_show_in_status(fake_grid, tmp_path):
    p = CaseStudyPanel(out=tmp_path / 'cs', data=str(tmp_path / 'missing'))
    p.b_run.click()
    with pytest.raises(SynthkitError, match='data folder does not exist'):
        p.wait(timeout=20)
    assert 'missing' in p.w_status.value and p.w_progress.bar_style == 'danger'
    p.w_conditions.value = ()
    p.b_run.click()
    assert 'no condition chosen' in p.w_status.value


def test_case_study_panel_shows_cached_rows_and_real_grid_config(fake_grid, ds, tmp_path, monkeypatch):
    grid = fake_grid['grid']
    cached = [dict(split='split_1', condition='baseline', seed=0, map50=0.4), dict(split='split_1', condition='+2', seed=0, map50=0.5)]
    monkeypatch.setattr(grid, 'run_grid', lambda *a, **kw: cached)   # everything came from the cache: no callbacks
    p = CaseStudyPanel(out=tmp_path / 'cs')
    p.run(); rows = p.wait(timeout=20)
    assert rows == cached and '0.500' in p.w_table.value and bytes(p.w_plot.value).startswith(b'\x89PNG')


def test_case_study_panel_on_the_real_grid_config(monkeypatch):
    exp = pytest.importorskip('synthkit.grid.config')
    from synthkit.casestudy import PRESETS
    assert list(casestudy_panel.grid_presets()) == list(PRESETS)
    p = CaseStudyPanel(seeds=(0, 1))
    assert p.w_preset.value == 'quick' and tuple(p.w_conditions.options) == PRESETS['quick'].conditions
    p.w_conditions.value = ('baseline', 'classic+2')
    cfg = p.config().check()
    assert isinstance(cfg, exp.GridConfig) and cfg.conditions == ('baseline', 'classic+2') and cfg.seeds == (0, 1)
    assert cfg.detect == PRESETS['quick'].detect and cfg.ddpm == PRESETS['quick'].ddpm   # everything else is the preset's
    assert len(exp.plan(cfg)) == 2 * 2 * 2


def test_case_study_panel_simulator_data_is_made_once(tmp_path):
    pytest.importorskip('synthkit.sarsim')
    p = CaseStudyPanel(out=tmp_path / 'cs', sim_n=10, sim_seed=3)
    assert p.w_source.value == 'simulator' and p.w_folder.layout.display == 'none'
    d1 = p.dataset()                                  # prepared as `synthkit case-study --preset quick` prepares it
    assert p.w_preset.value == 'quick' and {(it.width, it.height) for it in d1} == {(96, 96)}
    (yaml,) = (tmp_path / 'cs' / 'data').glob('sim-10-3-*/data.yaml')
    stamp = yaml.stat().st_mtime_ns
    d2 = p.dataset()                                  # the second Run loads what the first made
    assert len(d1) == len(d2) == 10 and d1.ids == d2.ids
    assert yaml.stat().st_mtime_ns == stamp
    p.w_source.value = 'folder'
    p.w_folder.value = ''
    with pytest.raises(SynthkitError, match='no data folder given'):
        p.dataset()

