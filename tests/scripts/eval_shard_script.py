"""Helper for test_eval_generation: draw a few rows with the tiny pipeline into a folder.

    accelerate launch --num_processes 2 --cpu tests/scripts/eval_shard_script.py OUT
    python tests/scripts/eval_shard_script.py OUT
"""

import os
import sys

import torch

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from erasekit.eval.benchmarks import BenchmarkRow  # noqa: E402
from erasekit.eval.generate import distributed_state, run_generation  # noqa: E402
from erasekit.generation import SamplingSettings  # noqa: E402
from erasekit.models.tiny import tiny_pipeline  # noqa: E402

PROMPTS = ["a red circle", "a blue square", "a green star", "a yellow heart", "a purple cross"]
GUIDANCE = [None, 5.0, None, 5.0, None]


def main(out: str) -> None:
    state = distributed_state(cpu=True)
    rows = [BenchmarkRow(p, 100 + k, g, k) for k, (p, g) in enumerate(zip(PROMPTS, GUIDANCE))]
    settings = SamplingSettings(steps=3, guidance_scale=3.0, batch_size=2)
    drawn = run_generation(tiny_pipeline(), rows, settings, out, model="tiny", rank=state.process_index,
                           world_size=state.num_processes)
    print(f"rank {state.process_index}/{state.num_processes} drew {drawn}", flush=True)
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
