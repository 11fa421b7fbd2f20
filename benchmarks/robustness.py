"""Robustness table: every erasure method under both prompt attacks and after resurgence.

Rows are computed by `erasekit.eval.robustness.measure_row` (what each column holds is there).

    python benchmarks/robustness.py --concept circle            # all registered methods
    python benchmarks/robustness.py --concept circle --methods uce trce
    python benchmarks/robustness.py --concept circle --methods uce trce-t --harden rece   # + hardened rows
    python benchmarks/robustness.py --concept red --methods trce-t esd-x --harden adv --seed 1 --attack-seed 101
    python benchmarks/robustness.py --experiment benchmarks/experiments/harden/red-cases48.json --attack-seeds 1 2 3

For the original model and each method's erasure of ``--concept`` (the method's
``shapes`` preset), on the same explicit target cases (prompts + seeds):

- ``plain``: target rate of the unattacked case prompts on the erased model;
- ``ringabell`` / ``unlearndiff``: success rate of the prompts each attack finds
  (attack presets for the Shapes world, see `erasekit.eval.attacks`);
- ``resurgence``: target rate (mean over the three wording tiers) after
  fine-tuning the erased model on benign renders of other concepts for
  ``--resurgence-steps`` steps (the delta on disk is never touched);
- ``tiers`` / ``preservation``: target rate per wording tier and the other values' adherence
  (both attributes read as named) relative to the original model's, on the probe prompts of
  `erasekit.eval.measure` (``--tier-prompts`` per tier, ``--preservation-prompts``).

With ``--harden rece`` (or ``adv``, or both) every method also gets a ``<method>+<variant>`` row:
its delta hardened by `erasekit.methods.harden` (Shapes preset, seed ``--seed``).  RECE derives
its adversarial embeddings in closed form; ``adv`` trains against its own soft-embedding attack
(continuous prepended tokens, the training seed's draws).  The measuring attacks search discrete
tokens (UnlearnDiffAtk-style) or evolve token sequences from a text-encoder concept vector
(Ring-A-Bell-style) with ``--attack-seed`` and their own budgets, so they are independent draws;
each ``adv`` row also records the training attack's last rounds (``train_attack``).  A chain such as
``--harden adv+rece`` hardens with each variant in turn (``<method>+adv+rece``: ``rece`` applied to
the ``adv``-hardened delta; ``--harden-config`` then applies to the last variant, or, as a JSON list, one dict to each variant); its row records each
step's cost (``harden_chain``) and is compared with the unhardened erasure.

``--harden-config JSON`` overrides the hardening preset (rows then carry ``--harden-tag`` and the
overrides); ``--reuse-deltas`` starts hardened rows from the unhardened row's saved delta of the
same seed and erasure settings instead of erasing again, and reuses ``OUT/deltas/<row>`` when it
hardened that same base delta with the same settings.  ``--seed`` seeds the base erasure and the hardening; rows are written to
``OUT/<method>.json`` (``OUT`` defaults to ``benchmarks/results/robustness/<concept>``).

``--attack-seeds 1 2 3`` attacks every erasure row's saved delta again with each of those attack seeds
(both attacks; stored rows included, so it can be added to a finished run): only the attack's random
draws change.  Each run is stored under ``OUT/attack-seeds/`` and reused; the summary and the
experiment tables then show and judge each attack's rate pooled over the seeds
(`erasekit.eval.attack_seeds`).

``--controls words-as-anchor`` also measures the controls of `erasekit.eval.controls` as rows
(``control-words-as-<anchor>``: the text encoder reads the concept's words as its anchor's, nothing
else changes), with the same cases, attacks and attack seeds, and no resurgence (a control changes no
UNet weight): what the attacks and the judge give against an erasure that draws the anchor whenever
the concept is named.

``--screen`` measures only the wording tiers and preservation of each row (no attacks, no resurgence), to
choose which settings are worth attacking: rows go to ``OUT/screens/`` and deltas to ``OUT/deltas/``, where a
full run with ``--reuse-deltas`` starts from them.

``--summary ROOT`` reads every row under ``ROOT/<concept>[/<seed dir>]/*.json`` and writes
``ROOT/summary.md``: each hardened row beside its unhardened one, with 95% Wilson intervals
and whether it meets the bars (<= 0.05 under each attack and after resurgence, preservation
>= 0.95 of the original's, plain rate no worse than without hardening).

Each (method) row is written atomically to ``OUT/<method>.json`` as soon as it is
done, with the settings its erasure ran with (``erase_settings``), and reused on a rerun
(delete it to recompute); a stored row measured with other settings (another resolution, seed,
overrides or preset) stops the run with a one-line error.  The table is printed and
written to ``OUT/robustness.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from erasekit.concepts.packs import get_concept
from erasekit.eval.atomic import write_text
from erasekit.eval.attack_seeds import StaleDeltaError, pooled_row
from erasekit.eval.controls import CONTROLS
from erasekit.eval.attacks.run import default_detector
from erasekit.eval.robustness import COLUMNS, StoredRowMismatch, run_rows
from erasekit.eval.robustness_table import folder_rows, markdown, preservation_text, summary
from erasekit.generation import SamplingSettings
from erasekit.methods.base import list_methods
from erasekit.methods.harden import variant_chain
from erasekit.models.loading import load_pipeline, resolve_model_path


def experiment_args(path: Path, ap: argparse.ArgumentParser) -> dict:
    """The options an experiment config sets (``{"about": ..., "args": {dest: value}}``); bad ones exit 2."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        ap.error(f"{path}: {err}")
    known = {action.dest for action in ap._actions} - {"help", "experiment", "summary"}
    args = doc.get("args") if isinstance(doc, dict) else None
    if not isinstance(args, dict) or set(doc) - {"about", "args"}:
        ap.error(f"{path}: needs {{'about': ..., 'args': {{...}}}} and nothing else")
    if unknown := sorted(set(args) - known):
        ap.error(f"{path}: unknown options {unknown}")
    return {k: Path(v) if k == "out" else v for k, v in args.items()}


def harden_chain(text: str) -> str:
    """A hardening variant or a ``+``-joined chain of them (``adv+rece``)."""
    try:
        variant_chain(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concept", default="circle")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every registered method")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--resurgence-steps", type=int, default=40, help="0: no resurgence column")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--harden", nargs="+", type=harden_chain, default=None,
                    help="also measure each method hardened by these variants (rece, adv, or a chain: adv+rece)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the base erasures and the hardening")
    ap.add_argument("--attack-seed", type=int, default=None, help="seed of the measuring attacks (default: theirs)")
    ap.add_argument("--attack-seeds", nargs="+", type=int, default=None,
                    help="also attack every erasure row's saved delta with these attack seeds (the summary pools them)")
    ap.add_argument("--harden-config", type=json.loads, default=None,
                    help="JSON overrides of the hardening's shapes preset (rows are labelled with --harden-tag)")
    ap.add_argument("--harden-tag", default="", help="suffix of the hardened rows' labels, e.g. '-short'")
    ap.add_argument("--method-config", type=json.loads, default=None,
                    help="JSON overrides of every method's shapes preset (rows are labelled <method><--method-tag>)")
    ap.add_argument("--method-tag", default=None,
                    help="suffix of the labels of rows with --method-config (default: --harden-tag)")
    ap.add_argument("--anchor", default=None,
                    help="replace the concept's anchor for the erasures and hardenings (label the rows with --method-tag)")
    ap.add_argument("--controls", nargs="+", default=[], choices=CONTROLS,
                    help="also measure these controls (erasekit.eval.controls): deltas no method computes, "
                         "rows labelled control-...")
    ap.add_argument("--reuse-deltas", action="store_true",
                    help="hardened rows start from OUT/deltas/<method> when it holds the same seed's delta")
    ap.add_argument("--no-original", action="store_true", help="skip the original model's row")
    ap.add_argument("--hardened-only", action="store_true", help="measure only the hardened rows")
    ap.add_argument("--screen", action="store_true",
                    help="measure only the wording tiers and preservation (no attacks, no resurgence); rows go to "
                         "OUT/screens/, deltas to OUT/deltas/, where a full run with --reuse-deltas reuses them")
    ap.add_argument("--experiment", type=Path, default=None,
                    help="JSON experiment config: {about, args: {option: value}}; command-line options win")
    ap.add_argument("--tier-prompts", type=int, default=32)
    ap.add_argument("--preservation-prompts", type=int, default=48)
    ap.add_argument("--summary", type=Path, default=None, help="write ROOT/summary.md from the rows under ROOT and exit")
    return ap


def main() -> None:
    ap = build_parser()
    a = ap.parse_args()
    if a.experiment is not None:
        ap.set_defaults(**experiment_args(a.experiment, ap))
        a = ap.parse_args()
    if a.summary is not None:
        write_text(a.summary / "summary.md", summary(a.summary))
        print((a.summary / "summary.md").read_text())
        return
    methods = a.methods or list_methods()
    out = a.out or Path("benchmarks/results/robustness") / a.concept
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("shapes")
    settings = SamplingSettings.for_model(resolve_model_path("shapes"))
    detector, detector_concept = default_detector(get_concept(a.concept), True)  # loaded once for all rows
    console = Console()
    variants = [] if a.hardened_only else ([] if a.no_original else [(None, None)]) + [(m, None) for m in methods]
    variants += [(m, h) for h in a.harden or [] for m in methods]
    try:
        rows = run_rows(pipe, a.concept, variants, out, settings, detector, detector_concept, n_cases=a.cases,
                        resurgence_steps=a.resurgence_steps, per_tier=a.tier_prompts, n_preserve=a.preservation_prompts,
                        seed=a.seed, attack_seed=a.attack_seed, harden_overrides=a.harden_config, tag=a.harden_tag,
                        reuse=a.reuse_deltas, announce=lambda label: console.print(f"[bold]{label}[/bold] ..."),
                        method_overrides=a.method_config, attack_seeds=a.attack_seeds, screen=a.screen,
                        method_tag=a.method_tag, anchor=a.anchor, controls=a.controls)
    except (StoredRowMismatch, StaleDeltaError) as err:
        ap.exit(2, f"{ap.prog}: error: {err}\n")
    if a.screen:
        original = folder_rows(out).get("original")
        table = Table(title=f"screen: {a.concept} (wording tiers and preservation only)")
        for c in ("method", "explicit", "synonym", "implicit", "preservation"):
            table.add_column(c)
        for r in rows:
            table.add_row(r["method"], *(f"{r['tiers'][t]:.2f}" for t in ("explicit", "synonym", "implicit")),
                          preservation_text(r, original)[1])
        console.print(table)
        return
    # the folder's table holds every row stored there, not only this invocation's; attack rates pooled over seeds
    stored = {label: pooled_row(out, r) for label, r in {**folder_rows(out), **{r["method"]: r for r in rows}}.items()}
    rows = [stored[r["method"]] for r in rows]
    table = Table(title=f"robustness: {a.concept}")
    for c in ("method", *COLUMNS, "erase s"):
        table.add_column(c)
    for r in rows:
        table.add_row(r["method"], *(f"{r[c]:.2f}" if c in r else "-" for c in COLUMNS),
                      f"{r['erase_seconds']:.1f}" if "erase_seconds" in r else "-")
    console.print(table)
    ordered = sorted(stored.values(), key=lambda r: (r["method"] != "original", r["method"]))
    write_text(out / "robustness.md", markdown(ordered, a.concept, a.cases, a.resurgence_steps))


if __name__ == "__main__":
    main()
