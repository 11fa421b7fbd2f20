"""Resumable, sharded generation: a two-process `accelerate launch` run equals a one-process run bit for bit."""

import dataclasses
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from erasekit.eval.benchmarks import BenchmarkRow
from erasekit.eval.generate import (
    MANIFEST,
    GenerationMismatchError,
    batches,
    fingerprint,
    image_name,
    prepare_shared,
    run_generation,
    scheduler_digest_text,
    shard,
)
from erasekit.generation import SamplingSettings, generate

SCRIPT = Path(__file__).parent / "scripts" / "eval_shard_script.py"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accelerate_launch(*args: str, processes: int = 2) -> subprocess.CompletedProcess:
    # On a CPU-only machine `--multi_gpu` makes accelerate start torchrun workers on the gloo
    # backend (MULTI_CPU); `--cpu` alone would start a single process.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def test_shard_and_batches():
    assert shard(range(7), 0, 2) == [0, 2, 4, 6] and shard(range(7), 1, 2) == [1, 3, 5]
    assert sorted(shard(range(7), 0, 3) + shard(range(7), 1, 3) + shard(range(7), 2, 3)) == list(range(7))
    with pytest.raises(ValueError):
        shard(range(3), 2, 2)
    rows = [BenchmarkRow("p", k, g, k) for k, g in enumerate([None, 5.0, 3.0, None, 5.0, None])]
    assert batches(rows, SamplingSettings(guidance_scale=3.0, batch_size=2)) == [
        (3.0, [0, 2]), (3.0, [3, 5]), (5.0, [1, 4])]
    assert [idx for _, idx in batches(rows, SamplingSettings(batch_size=1))][:2] == [[0], [2]]


@pytest.mark.slow
def test_two_process_run_equals_one_process_run(tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    one = subprocess.run([sys.executable, str(SCRIPT), str(single)], capture_output=True, text=True, env=_env(),
                         timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = accelerate_launch(str(SCRIPT), str(sharded))
    assert two.returncode == 0, two.stderr[-2000:]
    # batches (size 2, by guidance): [0, 2], [4], [1, 3] -> rank 0 takes the 1st and 3rd, rank 1 the 2nd
    assert "rank 0/2 drew [0, 2, 1, 3]" in two.stdout and "rank 1/2 drew [4]" in two.stdout
    names = sorted(p.name for p in single.glob("*.png"))
    assert names == [image_name(i) for i in range(5)] == sorted(p.name for p in sharded.glob("*.png"))
    for name in names:
        assert (single / name).read_bytes() == (sharded / name).read_bytes(), name


def test_resume_redraws_only_unfinished_batches_and_refuses_other_settings(tmp_path):
    from erasekit.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    rows = [BenchmarkRow(f"a prompt {k}", 7 + k, None, k) for k in range(3)]
    settings = SamplingSettings(steps=2, batch_size=2)
    assert run_generation(pipe, rows, settings, tmp_path, model="tiny") == [0, 1, 2]
    before = {i: (tmp_path / image_name(i)).read_bytes() for i in range(3)}
    (tmp_path / image_name(1)).unlink()
    assert run_generation(pipe, rows, settings, tmp_path, model="tiny") == [0, 1]  # its whole batch
    assert {i: (tmp_path / image_name(i)).read_bytes() for i in range(3)} == before
    assert run_generation(pipe, rows, settings, tmp_path, model="tiny") == []
    for other in (dataclasses.replace(settings, steps=3), dataclasses.replace(settings, batch_size=1)):
        with pytest.raises(GenerationMismatchError, match="another --out"):
            run_generation(pipe, rows, other, tmp_path, model="tiny")
    assert not list(tmp_path.glob(".*.tmp"))


def test_per_row_seed_and_guidance_are_honoured(tmp_path):
    from PIL import Image

    from erasekit.models.tiny import tiny_pipeline

    pipe = tiny_pipeline()
    rows = [BenchmarkRow("a red circle", 5, None, 0), BenchmarkRow("a red circle", 5, 9.0, 1),
            BenchmarkRow("a red circle", 6, None, 2)]
    settings = SamplingSettings(steps=2, guidance_scale=3.0)
    run_generation(pipe, rows, settings, tmp_path)
    got = [np.asarray(Image.open(tmp_path / image_name(i))) for i in range(3)]
    ref9 = np.asarray(generate(pipe, ["a red circle"], [5], dataclasses.replace(settings, guidance_scale=9.0))[0])
    ref3 = np.asarray(generate(pipe, ["a red circle"], [5], settings)[0])
    assert np.array_equal(got[1], ref9) and np.array_equal(got[0], ref3)
    assert not np.array_equal(got[0], got[1]) and not np.array_equal(got[0], got[2])


def _five_rows():
    return [BenchmarkRow(f"prompt {k}", 100 + k, [None, 5.0, None, 5.0, None][k], k) for k in range(5)]


def test_scheduler_digest_ignores_diffusers_bookkeeping_order():
    # diffusers builds `_use_default_values` from a set: its order follows the process's hash seed
    class Sched:
        def __init__(self, private):
            self.config = {"beta_start": 0.1, "steps_offset": 1, "_use_default_values": private}

    assert scheduler_digest_text(Sched(["a", "b", "c"])) == scheduler_digest_text(Sched(["c", "a", "b"]))
    other = Sched(["a"])
    other.config["steps_offset"] = 0
    assert scheduler_digest_text(other) != scheduler_digest_text(Sched(["a"]))


@pytest.mark.slow
def test_weights_digest_is_the_same_in_every_process():
    code = ("from erasekit.models.tiny import tiny_pipeline; "
            "from erasekit.eval.generate import weights_digest; print(weights_digest(tiny_pipeline()))")
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**_env(), "PYTHONHASHSEED": seed}).stdout.strip() for seed in ("1", "2")}
    assert len(digests) == 1 and len(digests.pop()) == 64


def test_a_process_never_removes_another_process_images(tmp_path):
    """Process 1 arriving after process 0 drew its batches, with other weights: refused, nothing removed."""
    from erasekit.models.tiny import tiny_pipeline

    pipe, rows = tiny_pipeline(), _five_rows()
    settings = SamplingSettings(steps=2, guidance_scale=3.0, batch_size=2)
    no_wait = lambda: None  # noqa: E731  (calls in sequence stand for processes after the barrier)
    kw = dict(model="tiny", world_size=2, barrier=no_wait)
    assert run_generation(pipe, rows, settings, tmp_path, weights="w0", rank=0, **kw) == [0, 2, 1, 3]
    drawn = {i: (tmp_path / image_name(i)).read_bytes() for i in (0, 1, 2, 3)}
    record = (tmp_path / MANIFEST).read_bytes()
    with pytest.raises(GenerationMismatchError, match="process 1 does not agree with process 0.*weights"):
        run_generation(pipe, rows, settings, tmp_path, weights="w1", rank=1, **kw)
    assert {i: (tmp_path / image_name(i)).read_bytes() for i in (0, 1, 2, 3)} == drawn
    assert (tmp_path / MANIFEST).read_bytes() == record
    assert run_generation(pipe, rows, settings, tmp_path, weights="w0", rank=1, **kw) == [4]
    # weights changed since: process 0 alone clears the stale images, process 1 then agrees
    notes = []
    assert run_generation(pipe, rows, settings, tmp_path, weights="w2", rank=0, notes=notes, **kw) == [0, 2, 1, 3]
    assert "5 stale images removed" in notes[0] and not (tmp_path / image_name(4)).exists()
    assert run_generation(pipe, rows, settings, tmp_path, weights="w2", rank=1, **kw) == [4]


def test_shared_preparation_waits_for_process_0_and_shares_its_error(tmp_path):
    import threading
    import time

    rows, settings = _five_rows(), SamplingSettings(steps=2, batch_size=2)
    info = fingerprint(rows, settings, "tiny", None, "w0")

    def both(infos, delay_rank0):
        barrier, results = threading.Barrier(2, timeout=60), {}

        def process(rank):
            if rank == 0:
                time.sleep(delay_rank0)  # process 1 reaches the folder first
            try:
                results[rank] = prepare_shared(tmp_path, infos[rank], rank=rank, world_size=2, barrier=barrier.wait)
            except GenerationMismatchError as err:
                results[rank] = err

        threads = [threading.Thread(target=process, args=(r,)) for r in (1, 0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        return results

    assert both([info, info], 0.3) == {0: None, 1: None}
    # process 0 finds images of other settings: it and process 1 both stop, nothing waits forever
    other = fingerprint(rows, dataclasses.replace(settings, steps=3), "tiny", None, "w0")
    got = both([other, other], 0.1)
    assert "another --out" in str(got[0]) and "process 1 does not agree" in str(got[1])
