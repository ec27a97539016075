"""The grid over several processes: `accelerate launch` with 2 CPU processes writes the results.csv of one process, each run trained once."""
import csv, json, os, re, socket, subprocess, sys, textwrap
from pathlib import Path

import pytest

from synthkit.errors import SynthkitError

ROOT = Path(__file__).resolve().parents[1]
EXE = str(Path(sys.executable).parent/'synthkit')
# two seeds: two (split, seed) groups, one per process; both need the pretrained start (made once, under a lock);
# DDPM and classic variations; 4 batches per run (8 real images and room for variations)
TINY = ['--set', 'sim_n=16', '--set', 'sim_size=64', '--set', "splits=('split_1',)", '--set', "split_sizes={'split_1': (8, 4, 4)}",
        '--set', "conditions=('baseline', '+1', 'classic+1')", '--set', 'steps=4', '--set', 'warmup_steps=0', '--set', 'imgsz=64',
        '--set', "ddpm={'steps': 2, 'crop': 32}", '--set', 'gen_steps=4', '--set', 'start=pretrained',
        '--set', "pretrain={'scenes': 25, 'steps': 2}", '--seeds', '0,1']
VOLATILE = {'run_dir', 'synth_dir', 'train_seconds', 'prep_seconds'}   # where and how long: not what was computed


def _env():
    # one thread per process in both cases (torchrun sets OMP_NUM_THREADS=1 anyway), no GPU: the same arithmetic
    return dict(os.environ, HF_HUB_OFFLINE='1', YOLO_OFFLINE='true', OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='',
                PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get('PYTHONPATH')) if p))


def _port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def launch(n, *args, timeout=300):
    "`accelerate launch` with n CPU processes: `--multi_gpu` starts them through torchrun (its `--cpu` starts one without an MPI hostfile)."
    cmd = [sys.executable, '-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', str(n), '--num_machines', '1',
           '--mixed_precision', 'no', '--dynamo_backend', 'no', '--main_process_port', str(_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=timeout)


def _rows(out):
    with open(out/'results.csv') as f: return [{k: v for k, v in r.items() if k not in VOLATILE} for r in csv.DictReader(f)]


def _curves(out):
    "Each run's per-epoch losses and metrics from Ultralytics' results.csv (less its time column)."
    curves = {}
    for p in out.glob('runs/*/detector/train/results.csv'):
        with open(p) as f: curves[p.parents[2].name] = [{k: v for k, v in r.items() if k.strip() != 'time'} for r in csv.DictReader(f)]
    return curves


def _variations(out):
    "(folder, source, k, sha256) of every variation made."
    return sorted((p.parent.name, r['source'], r['k'], r['sha256']) for p in out.glob('synth/*/*/manifest.jsonl')
                  for r in map(json.loads, p.read_text().splitlines()))


def test_two_processes_write_the_results_of_one(tmp_path):
    one, two = tmp_path/'one', tmp_path/'two'
    r = subprocess.run([EXE, 'case-study', '--out', str(one), *TINY], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    r = launch(2, EXE, 'case-study', '--out', str(two), *TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _rows(two) == _rows(one) and len(_rows(one)) == 6                 # same rows, same order
    assert (two/'report.md').is_file() and r.stdout.count('report:') == 1 and (two/'summary.csv').is_file()   # rank 0 alone
    # every run trained exactly once, by the process that owns its (split, seed)
    names = json.loads((two/'grid.json').read_text())['runs']
    procs = [json.loads((two/'processes'/f'rank-{k}-of-2.json').read_text()) for k in (0, 1)]
    assert sorted(n for p in procs for n in p['ran']) == sorted(names) and all(p['ran'] == p['share'] for p in procs)
    assert [{n.rsplit('-', 1)[1] for n in p['ran']} for p in procs] == [{'s0'}, {'s1'}]
    lines = re.findall(r'^\[(\d)/2\]\s+(\S+) (\S+)\s+seed (\d):', r.stdout, re.M)
    assert len(lines) == 6 and len({x[1:] for x in lines}) == 6 and {(x[0], x[3]) for x in lines} == {('1', '0'), ('2', '1')}
    assert [len(p['made']) for p in procs].count(1) == 1 and sum(len(p['made']) for p in procs) == 1   # the start: made once
    assert len(list((two/'pretrain').glob('*/done.json'))) == 1
    # the same computation step for step: every loss of every epoch, every variation's bytes
    assert _curves(two) == _curves(one) and len(_curves(one)) == 6
    assert _variations(two) == _variations(one) and _variations(one)


def test_a_failing_process_ends_the_waiting_one(tmp_path):
    "Rank 0 waits for the runs of rank 1, which fails: the launcher ends rank 0 (its grace here is a day) and the launch fails."
    script = tmp_path/'fail.py'
    script.write_text(textwrap.dedent('''
        import sys, time
        from pathlib import Path
        from synthkit.grid.config import GridConfig, plan
        from synthkit.grid.share import process_share, gather
        rank, world = process_share()
        waiting = Path(sys.argv[1])/'waiting'
        if rank == 1:
            t = time.time()
            while not waiting.exists() and time.time() - t < 60: time.sleep(0.1)
            sys.exit(2)
        waiting.parent.mkdir(parents=True, exist_ok=True); waiting.touch()
        gather(plan(GridConfig()), [1] * 30, waiting.parent, world, grace=86400)
    '''))
    r = launch(2, str(script), str(tmp_path/'grid'), timeout=240)   # a rank 0 left waiting would run into this timeout
    assert (tmp_path/'grid'/'waiting').exists() and r.returncode != 0, r.stderr[-2000:]


def test_a_share_runs_once_at_a_time(tmp_path):
    from synthkit.grid.share import own_share, lock_held
    with own_share(tmp_path, 1, 2):
        assert lock_held(tmp_path/'processes'/'rank-1-of-2.lock')
        with pytest.raises(SynthkitError, match='another process is already running share 1 of 2'):
            with own_share(tmp_path, 1, 2): pass
    assert not lock_held(tmp_path/'processes'/'rank-1-of-2.lock')
