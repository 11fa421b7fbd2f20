"""TRuST's stopping rule on the concept's measured presence, and the size of a fine-tuned change.

`StopRule`: every ``stop_every`` iterations (from iteration 0, before any
update) the CURRENT model generates ``stop_probes`` images from fixed seeded
noise on probe prompts (DDIM ``stop_steps`` steps, CFG ``guidance``): the target
prompts, or with ``stop_prompts="in-context"`` the concept's words beside a second
attribute's values (`erasekit.concepts.packs.in_context_prompts`), which training never
sees; a concept without such a set (free text, another world's) keeps the training
prompts, and the delta's metrics name the set used (``stop_probes_from``).  The step's
image scorer (Shapes detector probability, or CLIP score) measures the concept on
each; their mean is the presence ``P``.  Training stops at the
first check with ``P <= stop_ratio * P_0`` (``P_0``: the check at iteration 0);
the remaining iterations change nothing.  The probes draw from their own
generator, so checking does not alter the training samples.

`change_summary`: how much of the scope moved: neurons (output rows with any
changed entry), entries changed, and the fewest entries that hold 90% of the
squared change (``entries_90``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...concepts.packs import in_context_prompts
from ...concepts.spec import ConceptSpec
from ...models.conditioning import encode_conditions
from ...models.ddim import DDIMSampler
from ...models.unet_io import initial_latents
from ...training import step_generator
from ..saliency import ScoreSample

PROBE_SALT = -3


class StopRule:
    """Presence checks of one TRuST run (see the module docstring); checkpointable."""

    def __init__(self, step, config, concept: ConceptSpec):
        if step.scorer_name == "forget":
            raise ValueError("stop_ratio measures the concept on generated images, so it needs an image scorer "
                             "(scorer='detector' on the Shapes world, or 'clip'), not 'forget'; set stop_ratio to "
                             "null to train the whole budget")
        self.step, self.config = step, config
        context = in_context_prompts(concept) if config.stop_prompts == "in-context" else None
        if context is not None:
            self.prompts, self.embeds, self.source = context, encode_conditions(step.pipe, context), "in-context"
        else:  # the training prompts: asked for, or a concept without an in-context set
            self.prompts, self.embeds, self.source = step.prompts, step.embeds, "targets"
        g = step_generator(config.seed, PROBE_SALT)
        order = torch.randperm(len(self.prompts), generator=g).tolist()
        self.index = [order[i % len(order)] for i in range(config.stop_probes)]
        self.noise = initial_latents(step.unet, g, batch=config.stop_probes)
        self.sampler = DDIMSampler(step.pipe.scheduler, config.stop_steps)
        self.history: list[tuple[int, float]] = []
        self.stopped_at: int | None = None

    @torch.no_grad()
    def presence(self) -> float:
        """Mean scorer value on the probe images of the current model."""
        s = self.step
        z = self.sampler.denoise(s.unet, self.noise, 0, self.sampler.n_steps, self.embeds[self.index], s.uncond,
                                 self.config.guidance)
        values = [float(s.scorer(ScoreSample(z=z[k : k + 1], t=0, cond=self.embeds[i : i + 1], prompt=self.prompts[i],
                                             output=None, reference=None, x0=z[k : k + 1])))
                  for k, i in enumerate(self.index)]
        return sum(values) / len(values)

    def check(self, step: int) -> bool:
        """Whether training has stopped by ``step`` (measuring the presence when a check is due)."""
        if self.stopped_at is not None:
            return True
        if step % self.config.stop_every:
            return False
        p = self.presence()
        self.history.append((step, p))
        if step > 0 and p <= self.config.stop_ratio * self.history[0][1]:
            self.stopped_at = step
            return True
        return False

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"stop_history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 2)}
        if self.stopped_at is not None:
            state["stopped_at"] = torch.tensor(self.stopped_at)
        return state

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if "stop_history" in state:
            self.history = [(int(a), float(b)) for a, b in state["stop_history"].tolist()]
        self.stopped_at = int(state["stopped_at"]) if "stopped_at" in state else None

    def metrics(self, iterations: int) -> dict[str, Any]:
        trained = self.stopped_at if self.stopped_at is not None else iterations
        return {"iterations": trained, "iterations_budget": self.config.iterations, "stopped_at": self.stopped_at,
                "presence_checks": [list(h) for h in self.history], "stop_probes_from": self.source}


@torch.no_grad()
def change_summary(params: Mapping[str, torch.Tensor], originals: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Neurons and entries changed against ``originals``, and the entries holding 90% of the squared change."""
    neurons = neurons_total = entries = 0
    squares = []
    for n, p in params.items():
        d = (p.detach() - originals[n].to(p.device)).float()
        moved = d != 0
        rows = moved.reshape(moved.shape[0], -1).any(dim=1)
        neurons += int(rows.sum())
        neurons_total += rows.numel()
        entries += int(moved.sum())
        squares.append(d[moved].pow(2))
    sq = torch.cat(squares).sort(descending=True).values if squares else torch.zeros(0)
    total = float(sq.sum())
    k90 = int((sq.cumsum(0) < 0.9 * total).sum()) + 1 if total > 0 else 0
    return {"neurons_changed": neurons, "neurons_total": neurons_total, "entries_changed": entries,
            "entries_90": min(k90, entries)}
