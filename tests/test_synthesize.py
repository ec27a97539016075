"""synthesize / synthkit generate: kill-and-resume, per-output seeds, lineage guard, 2-process Accelerate run, errors."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest

from synthkit.errors import SynthkitError
from synthkit.generators import GenParams, Generator
from synthkit.images import read_image
from synthkit.ddpm import DDPMConfig
from synthkit.sdedit import DDPMGenerator
from synthkit.ddpm_train import train_ddpm
from synthkit.testing import speckle_toy
from synthkit.synthesize import Manifest, synthesize, regenerate, write_variation

BIN = Path(sys.executable).parent
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'HF_HUB_OFFLINE': '1'}
N_IMG, N_VAR = 6, 3


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    "A YOLO dataset folder (4 train, 1 val, 1 test images) and a tiny DDPM trained on it for a few iterations."
    from synthkit.data.formats import export_yolo
    root = tmp_path_factory.mktemp('syn')
    toy = speckle_toy(root/'raw', n=N_IMG, size=48, splits=['train'] * 4 + ['val', 'test'])
    export_yolo(toy, root/'data', {'train': toy.ids[:4], 'val': toy.ids[4:5], 'test': toy.ids[5:]})
    model = train_ddpm(toy, root/'ddpm', DDPMConfig(crop=32, channels=(16, 32), layers_per_block=1, norm_groups=8, batch=2, steps=2),
                       progress=False)
    return root, model


def _cmd(setup, out, *extra):
    root, model = setup
    return [str(BIN/'synthkit'), 'generate', str(root/'data'), '--generator', f'ddpm:{model}', '--n', str(N_VAR),
            '--strength', '0.5', '--steps', '20', '--seed', '3', '--batch-size', '2', '--out', str(out), '--quiet', *extra]


def _files(out: Path) -> dict:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob('*')) if p.is_file() and p.name != 'data.yaml'}


@pytest.fixture(scope='module')
def reference(setup):
    "An uninterrupted single-process run of `synthkit generate`."
    out = setup[0]/'ref'
    r = subprocess.run(_cmd(setup, out), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert f'{N_IMG * N_VAR} written' in r.stdout
    return out


def test_reference_layout(reference):
    recs = Manifest(reference).read()
    assert len(recs) == N_IMG * N_VAR and len({(r['source'], r['k']) for r in recs}) == len(recs)
    assert {r['part'] for r in recs} == {'train', 'val', 'test'}
    r = recs[0]
    for key in ('source', 'k', 'seed', 'generator', 'generator_version', 'model_id', 'weights_hash', 'params', 'batch_size', 'path', 'sha256',
                'dtype', 'threads'):
        assert key in r, key
    assert r['threads'] == 1   # OMP_NUM_THREADS=1 in ENV
    # the DDPM takes several sources per call: 18 outputs of one shape in 9 calls of 2 (source 0's k=2 shares one with source 1's k=0)
    assert r['params']['strength'] == 0.5 and all(q['batch_size'] == 2 for q in recs)
    assert (reference/'data.yaml').is_file() and (reference/r['label']).is_file()
    assert not [p for p in reference.rglob('.tmp-*')]


def test_kill_and_resume_gives_the_uninterrupted_files(setup, reference, tmp_path):
    out = tmp_path/'killed'
    p = subprocess.Popen(_cmd(setup, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    deadline = time.time() + 120
    while time.time() < deadline and p.poll() is None:
        if (out/'manifest.jsonl').exists() and len(Manifest(out).read()) >= 4: break
        time.sleep(0.05)
    assert p.poll() is None, 'the run finished before it could be killed'
    p.send_signal(signal.SIGKILL); p.wait()
    n_before = len(Manifest(out).read())
    assert 4 <= n_before < N_IMG * N_VAR
    r = subprocess.run(_cmd(setup, out), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert f'{N_IMG * N_VAR - n_before} written' in r.stdout and f'{n_before} already there' in r.stdout
    assert _files(out) == _files(reference)   # same images, labels and manifest, byte for byte; no temp files


def _check_consistent(out: Path):
    "What a kill at any moment may leave: records only of complete outputs (image and label with their sha256), no duplicates."
    from synthkit.files import sha256_file
    recs = Manifest(out).read()
    keys = [(r['source'], r['k']) for r in recs]
    assert len(keys) == len(set(keys)), 'duplicate records'
    for r in recs:
        assert sha256_file(out/r['path']) == r['sha256'] and sha256_file(out/r['label']) == r['label_sha256'], r['path']
    return len(recs)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_kill_at_random_points_then_resume(setup, reference, tmp_path, seed):
    "Two kills at seeded random moments (before the first output, between outputs, during the final rewrite), then a resume."
    import random
    rng, out, total = random.Random(seed), tmp_path/'killed', N_IMG * N_VAR
    for _ in range(2):
        target, extra = rng.randint(0, total), rng.uniform(0, 0.4)
        p = subprocess.Popen(_cmd(setup, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        deadline = time.time() + 120
        while time.time() < deadline and p.poll() is None:
            if target == 0 or ((out/'manifest.jsonl').exists() and len(Manifest(out).read()) >= target): break
            time.sleep(0.02)
        time.sleep(extra)
        p.send_signal(signal.SIGKILL); p.wait()
        _check_consistent(out)
    r = subprocess.run(_cmd(setup, out), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    assert _check_consistent(out) == total
    assert _files(out) == _files(reference)   # byte for byte, no temp files left


def test_two_accelerate_processes_give_the_single_process_files(setup, reference, tmp_path):
    out = tmp_path/'acc'
    # --multi_gpu: torchrun's 2 processes, CPUs too (with --cpu accelerate 1.x starts one process where MPI is absent)
    cmd = [str(BIN/'accelerate'), 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', '--num_cpu_threads_per_process', '1'] + _cmd(setup, out)
    r = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('synthesize:') == 2, r.stdout   # two processes, each with its share
    assert _files(out) == _files(reference)


def test_lineage_guard(setup, tmp_path):
    r = subprocess.run(_cmd(setup, tmp_path/'x', '--into', 'train'), capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and 'lineage guard' in r.stderr and "'toy004' is in 'val'" in r.stderr, r.stderr
    assert not (tmp_path/'x'/'images').exists()
    from synthkit.data.formats import load_dataset
    ds = load_dataset(setup[0]/'data')
    s = synthesize(ds, DDPMGenerator(setup[1]), 1, GenParams(strength=0.3, steps=10), tmp_path/'y', parts={'train': ds.ids[:2]},
                   into='train', progress=False)
    assert s.written == 2 and {x['part'] for x in Manifest(tmp_path/'y').read()} == {'train'}


def test_seeds_regenerate_in_any_order(setup, reference):
    gen = DDPMGenerator(setup[1])
    recs = Manifest(reference).read()
    for r in [recs[5], recs[0], recs[13]]:   # alone, out of order, with other companions in its batch
        assert np.array_equal(regenerate(r, gen), read_image(reference/r['path'])), r['path']


def test_regenerate_at_its_place_in_the_batch_with_more_threads(setup, tmp_path):
    """Byte for byte at any thread count: a record is recomputed at its own place in a batch of its size. Channels-last
    GroupNorm sums each image in chunks of the whole batch split across the threads, so with 4 threads and 3 outputs per
    call the 2nd and 3rd outputs of a call round otherwise than the 1st (regenerated in the 1st place, 4 of 6 differed)."""
    from synthkit.data.formats import load_dataset
    from synthkit.generators import torch_threads
    ds, gen = load_dataset(setup[0]/'data'), DDPMGenerator(setup[1], dtype='bf16')   # bf16: the rounding shows on every CPU
    with torch_threads(4):
        synthesize(ds, gen, 3, GenParams(strength=0.5, steps=20, seed=3), tmp_path/'out', parts={'train': ds.ids[:2]}, batch_size=3,
                   progress=False)
    recs = Manifest(tmp_path/'out').read()
    assert [r['row'] for r in recs] == [0, 1, 2] * 2 and {r['threads'] for r in recs} == {4}
    for r in recs:
        assert np.array_equal(regenerate(r, gen), read_image(tmp_path/'out'/r['path'])), (r['source'], r['k'])


def test_user_errors(setup, reference, tmp_path):
    root, model = setup
    r = subprocess.run(_cmd(setup, reference, '--strength', '0.6'), capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and 'other settings' in r.stderr and 'new folder' in r.stderr
    r = subprocess.run(_cmd(setup, tmp_path/'z', '--parts', 'nope'), capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "--parts names 'nope'" in r.stderr
    r = subprocess.run([str(BIN/'synthkit'), 'generate', str(root/'data'), '--out', str(tmp_path/'y'), '--quiet'],
                       capture_output=True, text=True, env=ENV)   # the default generator, ddpm, named without its model
    assert r.returncode == 2 and "generator 'ddpm' needs a model" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    bad = tmp_path/'bad'; bad.mkdir()
    (bad/'manifest.jsonl').write_text('{"source": "a", "k": 0}\nnot json\n{"source": "b", "k": 0}\n')
    with pytest.raises(SynthkitError, match=r'manifest.jsonl:2: bad JSON'): Manifest(bad).read()

    class Other(Generator):
        name = 'other'
    with pytest.raises(SynthkitError, match="made by generator='ddpm'"): regenerate(Manifest(reference).read()[0], Other())
    rec = Manifest(reference).read()[0]   # made in the default precision (auto: bf16 where the CPU has it)
    other = 'fp32' if rec['dtype'] == 'bfloat16' else 'bf16'
    with pytest.raises(SynthkitError, match=f"computed in {rec['dtype']}, this generator runs in .*dtype='{'bf16' if other == 'fp32' else 'fp32'}'"):
        regenerate(rec, DDPMGenerator(model, dtype=other))
    from synthkit.data.formats import load_dataset
    ds = load_dataset(root/'data')
    with pytest.raises(SynthkitError, match='n_per_image=0'):
        synthesize(ds, DDPMGenerator(model), 0, GenParams(), tmp_path/'w', progress=False)
    with pytest.raises(SynthkitError, match="part 'a/b' is not a folder name"):
        write_variation(tmp_path/'w', ds[0], 0, np.zeros((8, 8), np.uint8), {}, 'a/b')


def test_dtype_option(setup, tmp_path):
    r = subprocess.run(_cmd(setup, tmp_path/'f32', '--parts', 'test', '--dtype', 'fp32'), capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    recs = Manifest(tmp_path/'f32').read()
    assert len(recs) == N_VAR and {x['dtype'] for x in recs} == {'float32'}
    assert np.array_equal(regenerate(recs[1], DDPMGenerator(setup[1], dtype='fp32')), read_image(tmp_path/'f32'/recs[1]['path']))
    r = subprocess.run(_cmd(setup, tmp_path/'f16', '--dtype', 'fp16'), capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "dtype='fp16' is not one of auto, fp32, bf16" in r.stderr and 'Traceback' not in r.stderr, r.stderr
    r = subprocess.run([str(BIN/'synthkit'), 'generate', str(setup[0]/'data'), '--generator', 'classic', '--dtype', 'fp32',
                        '--out', str(tmp_path/'c'), '--quiet'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 2 and "generator 'classic' has no option 'dtype'" in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_generator_options_from_the_command_line(setup, tmp_path):
    "`synthkit generate --option KEY=VALUE` reaches the generator's constructor; an option it doesn't take is one line."
    root, _ = setup
    base = [str(BIN/'synthkit'), 'generate', str(root/'data'), '--generator', 'classic', '--n', '1', '--quiet']
    r = subprocess.run(base + ['--out', str(tmp_path/'a'), '--option', 'looks=None', '--option', 'turns=False'], capture_output=True, text=True, env=ENV)
    assert r.returncode == 0, r.stderr
    rec = Manifest(tmp_path/'a').read()[0]
    assert rec['generator'] == 'classic' and '"looks": null' in json.dumps(rec) and '"turns": false' in json.dumps(rec), rec   # recorded
    bad = subprocess.run(base + ['--out', str(tmp_path/'b'), '--option', 'speckle=3'], capture_output=True, text=True, env=ENV)
    err = [l for l in bad.stderr.splitlines() if l.strip()]
    assert bad.returncode == 2 and len(err) == 1 and "generator 'classic' has no option 'speckle'" in err[0], bad.stderr
    assert not (tmp_path/'b').exists()
