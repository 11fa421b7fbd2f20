"""What a benchmark run measures: the full and quick modes, as plans.

Full: every scenario of `erasekit.eval.tasks` (six YAML files), every method variant with its ``shapes`` preset,
32 prompts per wording tier (explicit, synonym, implicit), 16 adversarial
prompts when a source is available, 48 preservation prompts (wall times of
past runs: ``docs/experiments/bench-history.md``).

``--seed S`` (repeatable, either mode) adds, for every seed-dependent variant
(`erasing.seed_dependent`: all but the closed-form UCE and TRCE-T), a cell
measured with the method config's ``seed`` set to S; the report puts the
spread over seeds next to each scenario's table.

Quick (``--quick``) changes exactly this (`QUICK_CHANGES` is printed in the
report):

- scenarios ``attribute`` (red) and ``combination`` (red circle) only;
- 8 prompts per tier instead of 32, 16 preservation prompts instead of 48,
  8 adversarial prompts instead of 16;
- fewer iterations / trajectories (each method's ``MethodSpec.quick``, roughly a fifth of the
  ``shapes`` presets): ESD-x/ESD-u 30 instead of 150; KSCU 30 (objects,
  attributes) / 20 (styles) instead of 150 / 100; SalUn 30 instead of 150;
  TRuST 16 instead of 80; TRuST-KV 120 instead of 600; TRCE-V and TRCE 8 cond. + 16 uncond. trajectories
  (24 iterations) instead of 24 + 48 (72 iterations).  ``esd@kscu`` follows
  KSCU's count.  UCE and TRCE-T (closed form) are unchanged;
- the adversarial tier (when the attacks package is there): 8 prompts, 20
  Ring-A-Bell generations instead of the attack's ``shapes`` preset.

Sampling (the model card's 25 DDIM steps, guidance 3) and seeds are the same
in both modes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from ...methods.base import get_method, list_methods
from ..tasks import task_keys
from .erasing import all_variants

QUICK_SCENARIOS = ["attribute", "combination"]
QUICK_ADVERSARIAL = {"generations": 20}


def quick_overrides() -> dict[str, dict]:
    """Each registered method's quick-benchmark config overrides (its ``MethodSpec.quick``), where it has any."""
    specs = [get_method(name) for name in list_methods()]
    return {spec.name: dict(spec.quick) for spec in specs if spec.quick}


QUICK_CHANGES = [
    f"scenarios: {', '.join(QUICK_SCENARIOS)} only (full: {', '.join(task_keys())})",
    "8 prompts per wording tier (full: 32), 16 preservation prompts (full: 48), 8 adversarial prompts (full: 16) "
    "searched with 20 Ring-A-Bell generations (full: the attack's shapes preset)",
    "ESD-x/ESD-u 30 iterations (full: 150); KSCU 30 for objects/attributes, 20 for styles (full: 150/100); "
    "SalUn 30 (full: 150); TRuST 16 (full: 80); TRuST-KV 120 (full: 600); TRCE-V/TRCE 8 conditional + 16 unconditional trajectories, "
    "24 iterations (full: 24 + 48, 72); esd@kscu follows KSCU; UCE and TRCE-T unchanged (closed form)",
    "the Frechet distance is fitted on 16 images per model (full: 48), so it is much noisier",
]


@dataclass
class BenchPlan:
    mode: str
    scenarios: list[str]
    methods: list[str]
    per_tier: int
    n_preserve: int
    n_adversarial: int
    overrides: dict[str, dict] = field(default_factory=dict)
    adversarial_overrides: dict = field(default_factory=dict)
    world: str = "shapes"
    # Extra method-config seeds: each seed-dependent variant is measured again with each (seed 0 is the
    # main table); the report gives the spread over seeds.  See `seed_dependent`.
    extra_seeds: list[int] = field(default_factory=list)

    @classmethod
    def full(cls) -> "BenchPlan":
        return cls("full", task_keys(), all_variants(), per_tier=32, n_preserve=48, n_adversarial=16)

    @classmethod
    def quick(cls) -> "BenchPlan":
        return cls("quick", list(QUICK_SCENARIOS), all_variants(), per_tier=8, n_preserve=16, n_adversarial=8,
                   overrides=quick_overrides(),
                   adversarial_overrides=dict(QUICK_ADVERSARIAL))

    def select(self, scenarios: list[str] | None = None, methods: list[str] | None = None) -> "BenchPlan":
        """A copy restricted to some scenarios / method variants (kept in the canonical order)."""
        known_s, known_m = task_keys(), all_variants()
        for name, wanted, known in (("scenario", scenarios, known_s), ("method", methods, known_m)):
            bad = [w for w in wanted or [] if w not in known]
            if bad:
                raise ValueError(f"unknown {name} {', '.join(bad)}; choose from {', '.join(known)}")
        return replace(self,
                       scenarios=[s for s in known_s if s in scenarios] if scenarios else list(self.scenarios),
                       methods=[m for m in known_m if m in methods] if methods else list(self.methods))

    def with_extra_seeds(self, seeds: list[int] | None) -> "BenchPlan":
        """A copy that also measures every seed-dependent variant with these method-config seeds."""
        wanted = sorted({int(s) for s in seeds or []} - {0})
        if any(s < 0 for s in wanted):
            raise ValueError("seeds are >= 0 (seed 0 is the main table's)")
        return replace(self, extra_seeds=wanted)

    def seeded_overrides(self, seed: int) -> dict[str, dict]:
        """The plan's overrides with ``seed`` set in every variant's config (and KSCU's, which esd@kscu reads)."""
        names = set(all_variants()) | set(self.overrides) | {"kscu"}
        return {name: {**self.overrides.get(name, {}), "seed": seed} for name in names}

    def as_dict(self) -> dict:
        return asdict(self)
