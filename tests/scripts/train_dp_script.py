"""Helper for test_data_parallel: fine-tune the tiny pipeline with esd-x, TRuST and KSCU, write weight checksums.

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/train_dp_script.py OUT[:MODE] ...
    python tests/scripts/train_dp_script.py OUT[:MODE] ...

Each ``OUT:MODE`` is one run, in order, in the same process(es) (one launch pays the start-up
once); a run that finishes writes its checksums to OUT.  MODE: empty (plain), ``same``,
``interrupt`` or ``resume``.  ``same`` makes every process draw process 0's samples: averaging two
equal gradients must then give exactly the one-process run.  ``interrupt`` stops TRuST and KSCU
right after their step-2 checkpoint (they checkpoint every step), says so on stdout and writes
nothing.  ``resume`` continues them from it.
"""

import json
import os
import sys

import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from erasekit.concepts.spec import ConceptSpec  # noqa: E402
from erasekit.methods.base import get_method  # noqa: E402
from erasekit.models.tiny import tiny_pipeline  # noqa: E402
from erasekit.training import data_parallel, trainer  # noqa: E402

COMBO = ConceptSpec(name="red-circle", kind="object", targets=["red circle"], anchor="shape",
                    templates=["a {}", "a picture of a {}"], combination=["red", "circle"])
CONFIGS = {
    "esd-x": {"iterations": 3, "n_steps": 2, "lr": 1e-2},
    "trust": {"iterations": 3, "n_steps": 2, "lr": 1e-2, "pool_size": 2, "retain_pool_size": 2, "scorer": "forget"},
    # KSCU's step state (its running trajectory) steers which latents later steps train on
    "kscu": {"iterations": 4, "n_steps": 6, "start_step": 3, "lr": 1e-3},
}
RESUMABLE = ("trust", "kscu")


class Interrupt(Exception):
    pass


def _stop_after_checkpoint_2(save):
    def wrapped(folder, step, *args, **kwargs):
        path = save(folder, step, *args, **kwargs)
        if step == 2:
            raise Interrupt("simulated interruption at step 2")
        return path
    return wrapped


def run(out: str, mode: str) -> None:
    original_generator, original_save = trainer.step_generator, trainer.save_checkpoint
    if mode == "same":
        trainer.step_generator = lambda seed, step, rank=0: original_generator(seed, step)
    if mode == "interrupt":
        trainer.save_checkpoint = _stop_after_checkpoint_2(original_save)
    try:
        result = train(out, mode)
    finally:
        trainer.step_generator, trainer.save_checkpoint = original_generator, original_save
    dp = data_parallel.current()
    if mode != "interrupt" and (dp is None or dp.is_main):
        with open(out, "w") as fh:
            json.dump(result, fh)


def train(out: str, mode: str) -> dict:
    dp = data_parallel.current()
    result = {"processes": dp.num_processes if dp is not None else 1}
    for method, overrides in CONFIGS.items():
        if mode in ("interrupt", "resume") and method not in RESUMABLE:
            continue
        info = get_method(method)
        ckpt = {"checkpoint_dir": f"{out}.{method}.ckpt", "checkpoint_every": 1} if method in RESUMABLE else {}
        if mode in ("interrupt", "resume"):
            ckpt["resume"] = True
        try:
            delta = info.erase(tiny_pipeline(), COMBO, info.config_cls(progress=False, **overrides, **ckpt))
        except Interrupt:
            print(f"{out}: {method} interrupted after step 2", flush=True)
            continue
        result[method] = {"checksum": data_parallel.checksum(delta.tensors),
                          "processes_metric": delta.manifest.metrics.get("data_parallel_processes", 1)}
    return result


if __name__ == "__main__":
    runs = [arg.partition(":")[::2] for arg in sys.argv[1:]]
    for out, mode in runs:
        run(out, mode)
