"""Robustness rows: an erasure (optionally hardened) under both prompt attacks and after resurgence.

For the original model and a method's Shapes-preset erasure of a concept, on the same explicit
target cases (prompts + seeds), a row holds:

- ``plain``: target rate of the unattacked case prompts on the erased model;
- ``ringabell`` / ``unlearndiff``: success rate of the prompts each attack finds (the attacks'
  Shapes presets, seeded by ``attack_seed``: independent of any hardening's own training attack);
- ``resurgence``: target rate (mean over the wording tiers) after fine-tuning the erased model on
  benign renders of other concepts (the delta on disk is never touched);
- ``tiers`` / ``adherence``: target rate per wording tier and the other values' adherence (shape and
  colour both read as named), from `erasekit.eval.measure.measure_erasure`;
  ``adherence_by_attribute``: the same per attribute (shape, color);
- cost: seconds and iterations of the erasure and of the hardening (`erasekit.methods.harden`).

A control row (``control``, `erasekit.eval.controls`) measures a delta no method computes in the same way.
Rows can also be attacked with more attack seeds on their saved deltas (`erasekit.eval.attack_seeds`).
`benchmarks/robustness.py` and ``erasekit bench --robustness`` compute rows;
`erasekit.eval.robustness_table` renders the stored ones (BENCHMARKS.md, the hardening pages).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from ..concepts.packs import get_concept
from ..generation import SamplingSettings
from ..methods.base import get_method
from ..methods.harden import harden, variant_chain, variant_config
from ..models.arithmetic import signature
from ..models.delta import WeightDelta, apply_delta, revert_delta
from .attacks import concept_cases, judge_prompts, model_state, run_attack, run_resurgence
from .attack_seeds import ATTACKS, run_attack_seeds
from .attacks.common import FoundPrompt
from .controls import control_delta, control_label
from .measure import measure_erasure

COLUMNS = ("plain", "ringabell", "unlearndiff", "resurgence")


def erase_config(method: str, seed: int, method_overrides: dict | None = None):
    """The config a row's erasure runs with: ``method``'s Shapes preset, quiet, ``seed`` and the overrides."""
    info = get_method(method)
    return info.config_cls.for_world("shapes", seed=seed, **quiet(info.config_cls), **(method_overrides or {}))


def erase_settings(config, kind: str) -> dict:
    """What decides a row's erasure of a concept of ``kind``: the fingerprint of the config it runs with there
    (`for_kind`), less its runtime fields, as JSON stores it."""
    resolved = config.for_kind(kind).fingerprint()
    runtime = type(config).RUNTIME_FIELDS
    return json.loads(json.dumps({k: v for k, v in resolved.items() if k not in runtime}, default=str))


def delta_settings(delta: WeightDelta, config_cls, kind: str) -> dict | None:
    """`erase_settings` of the config a saved delta records (None when it no longer parses as ``config_cls``)."""
    recorded = {k: v for k, v in delta.manifest.config.items() if k in config_cls.model_fields}
    try:
        return erase_settings(config_cls(**recorded), kind)
    except ValueError:
        return None


def saved_anchor(delta: WeightDelta) -> str | None:
    """The anchor of the concept a saved delta erased (None where its manifest does not record one)."""
    concept = delta.manifest.config.get("concept")
    return concept.get("anchor") if isinstance(concept, dict) else None


def _plain_rate(pipe, delta, cases, detector, detector_concept, settings) -> float:
    found = [FoundPrompt(c.case_number, c.prompt, c.seed, [], c.prompt, None) for c in cases]
    with model_state(pipe, delta, erased=True):
        judge_prompts(pipe, found, detector, detector_concept, settings)
    return sum(bool(f.success) for f in found) / len(found)


def _tiers_and_preservation(pipe, delta, concept: str, settings, per_tier: int, n_preserve: int) -> dict:
    if delta is not None:
        apply_delta(pipe, delta)
    try:
        m = measure_erasure(pipe, concept, n_per_tier=per_tier, n_preserve=n_preserve, settings=settings)
    finally:
        if delta is not None:
            revert_delta(pipe, delta)
    kept = m["preservation_adherence"]
    return {"tiers": m["target_rate"], "adherence": kept["both"],
            "adherence_by_attribute": {"shape": kept["shape"], "color": kept["color"]}}


def measure_row(pipe, method: str | None, concept: str, n_cases: int, resurgence_steps: int, out: Path,
            settings: SamplingSettings, detector, detector_concept: str, hardening: str | None = None,
            per_tier: int = 32, n_preserve: int = 48, seed: int = 0, attack_seed: int | None = None,
            harden_overrides: dict | list[dict] | None = None, tag: str = "", reuse: bool = False,
            method_overrides: dict | None = None, attacks: bool = True, method_tag: str | None = None,
            anchor: str | None = None, control: str | None = None) -> dict:
    """One row: the original (``method=None``) or ``method``'s Shapes-preset erasure of ``concept`` (with
    ``method_overrides`` applied: the row is then labelled `row_label`'s way), hardened by ``hardening`` when
    given; artefacts (deltas, attack prompts, resurgence) are written under ``out``.  ``attacks=False`` (a
    screen) stops after the wording tiers and preservation: no plain cases, attacks or resurgence.
    ``anchor`` replaces the concept's anchor for the erasure and the hardening (`ConceptSpec.with_anchor`).
    ``control`` (with ``method=None``) measures that control's delta (`erasekit.eval.controls`) instead
    of the original model, labelled `control_label`'s way (no resurgence: it changes no UNet weight)."""
    if control is not None and method is not None:
        raise ValueError(f"a row measures a method or a control, not both ({method!r} and {control!r})")
    spec = get_concept(concept) if anchor is None else get_concept(concept).with_anchor(anchor)
    cases = concept_cases(spec, n_cases, True)
    base_label = row_label(method, None, tag, method_overrides, method_tag, anchor) if method is not None else None
    label = row_label(method, hardening, tag, method_overrides, method_tag, anchor) if method is not None else None
    if control is not None:
        label = control_label(control, spec)
    row: dict = {"method": label or "original", "concept": concept, "n_cases": n_cases, "seed": seed,
                 "attack_seed": attack_seed, "per_tier": per_tier, "n_preserve": n_preserve,
                 "torch_threads": torch.get_num_threads(), "arithmetic": signature()}  # ids are bytes of both
    if harden_overrides and hardening is not None:
        row["harden_overrides"] = harden_overrides
    if method_overrides and method is not None:
        row["method_overrides"] = method_overrides
    if anchor is not None and method is not None:
        row["anchor"] = anchor
    delta, delta_dir = None, None
    if method is not None:
        info = get_method(method)
        config = erase_config(method, seed, method_overrides)
        row["erase_settings"] = erase_settings(config, spec.kind)
        t0 = time.perf_counter()
        stored = out / "deltas" / base_label
        saved = WeightDelta.load(stored) if reuse and (stored / "manifest.json").exists() else None
        if (saved is not None and saved.manifest.seed == seed and saved_anchor(saved) == spec.anchor
                and delta_settings(saved, info.config_cls, spec.kind) == row["erase_settings"]):
            delta = saved  # the same method, settings and seed: the unhardened row's delta
            row["erase_reused"] = True
            row["erase_seconds"] = delta.manifest.wall_time_s
        else:
            delta = info.erase(pipe, spec, config)
            row["erase_seconds"] = time.perf_counter() - t0
        row["erase_iterations"] = delta.manifest.metrics.get("iterations")
        if hardening is not None:
            delta = _harden_chain(pipe, delta, spec, hardening, row, out, base_label, seed, harden_overrides, tag, reuse)
    elif control is not None:
        row["control"] = control
        delta = control_delta(pipe, control, spec)
    if delta is not None:
        delta_dir = out / "deltas" / label
        delta.save(delta_dir)
        delta = WeightDelta.load(delta_dir)
        row["delta_id"] = delta.delta_id  # what the attacks measured: equal ids, equal rows for one attack seed
    row.update(_tiers_and_preservation(pipe, delta, concept, settings, per_tier, n_preserve))
    if not attacks:
        return {**row, "screen": True}
    row["plain"] = _plain_rate(pipe, delta, cases, detector, detector_concept, settings)
    attack_config = {"seed": attack_seed} if attack_seed is not None else None
    for attack in ("ringabell", "unlearndiff"):
        t0 = time.perf_counter()
        result = run_attack(pipe, attack, spec, delta=delta, config=attack_config, cases=cases, detector=detector,
                            detector_concept=detector_concept, settings=settings, out=out / "attacks" / f"{row['method']}-{attack}",
                            search_cache=out / "attacks" / "search-cache")
        row[attack] = result.success_rate
        row[f"{attack}_seconds"] = time.perf_counter() - t0
    if delta is not None and resurgence_steps > 0 and control is None:  # a control has no fine-tuned scope
        res = run_resurgence(pipe, delta, spec, {"steps": resurgence_steps, "save_delta": False},
                             detector=detector, detector_concept=detector_concept, settings=settings,
                             out=out / "resurgence" / label, delta_path=delta_dir)
        row["resurgence_before"] = res.mean_before
        row["resurgence"] = res.mean_after
        row["resurgence_steps"] = resurgence_steps
        row["resurgence_seconds"] = res.seconds
        row["delta_files_unchanged"] = res.delta_files_unchanged
    return row


def _harden_chain(pipe, delta: WeightDelta, spec, hardening: str, row: dict, out: Path, base_label: str, seed: int,
                  overrides: dict | list[dict] | None, tag: str, reuse: bool) -> WeightDelta:
    """``delta`` hardened by each variant of ``hardening`` in turn (``adv+rece``: adv, then rece on its result),
    each with its Shapes preset and the row's ``seed``; ``overrides`` (a ``seed`` among them included) apply to
    the last variant, or, given as a list, one dict to each variant in turn; fills ``row``'s hardening cost and
    the base erasure's id (``base_delta_id``).

    With ``reuse``, a step whose delta is saved under ``out/deltas/<label so far>`` from the same base delta and
    settings (for example the ``adv`` row's delta, the first step of ``adv+rece``) is read back."""
    steps, row["base_delta_id"] = variant_chain(hardening), delta.delta_id
    per_step = chain_overrides(steps, overrides)
    done: list[dict] = []
    for i, variant in enumerate(steps):
        last = i == len(steps) - 1
        cfg_cls = variant_config(variant)
        cfg = cfg_cls.for_world("shapes", **{"seed": seed, **quiet(cfg_cls), **per_step[i]})  # a step may set its own seed
        folder = out / "deltas" / (f"{base_label}+{'+'.join(steps[:i + 1])}" + (tag if last else ""))
        t0 = time.perf_counter()
        step = {"variant": variant, "settings": cfg.model_dump(exclude={"progress"})}
        if reuse and (stored := _stored_step(folder, last, delta, variant, cfg)) is not None:
            delta, step["reused"], step["seconds"] = stored, True, stored.manifest.wall_time_s
        else:
            delta = harden(pipe, delta, spec, cfg)
            step["seconds"] = time.perf_counter() - t0
            if not last and not per_step[i] and not folder.exists():  # later chains can start from it
                delta.save(folder)  # (a step with overrides is not the preset its folder name says)
        done.append({**step, **_harden_cost(delta.manifest.metrics)})
    row["harden_settings"] = done[-1]["settings"]  # the preset as it was, overrides applied
    row["harden_seconds"] = sum(d["seconds"] for d in done)
    if len(done) == 1:
        row.update({k: v for k, v in done[0].items() if k not in ("variant", "settings", "seconds", "reused")})
        if done[0].get("reused"):
            row["harden_reused"] = True
    else:
        row["harden_chain"] = done
        row["harden_iterations"] = "+".join(str(d.get("harden_iterations")) for d in done)
        if trained := [d["train_attack"] for d in done if "train_attack" in d]:
            row["train_attack"] = trained[-1]
    return delta


def chain_overrides(steps: list[str], overrides: dict | list[dict] | None) -> list[dict]:
    """One override dict per chain step: a dict applies to the last step, a list to each step in turn."""
    if isinstance(overrides, list):
        if len(overrides) != len(steps):
            raise ValueError(f"{len(overrides)} override dicts for a chain of {len(steps)} ({'+'.join(steps)})")
        return [dict(o) for o in overrides]
    return [{} for _ in steps[:-1]] + [dict(overrides or {})]


def _stored_step(folder: Path, last: bool, base: WeightDelta, variant: str, cfg) -> WeightDelta | None:
    """A saved delta of this chain step: ``folder``'s, or for an inner step any delta saved beside it
    (say the ``-g1`` row's, for a chain whose first step has that row's overrides)."""
    found = stored_hardening(folder, base, variant, cfg)
    if found is None and not last and folder.parent.exists():
        found = next((d for f in sorted(folder.parent.iterdir()) if f != folder
                      and (d := stored_hardening(f, base, variant, cfg)) is not None), None)
    return found


def stored_hardening(folder: Path, base: WeightDelta, variant: str, cfg) -> WeightDelta | None:
    """The hardened delta saved in ``folder`` if it hardened ``base`` with exactly ``cfg``, else None."""
    if not (folder / "manifest.json").exists():
        return None
    config = json.loads((folder / "manifest.json").read_text()).get("config", {})  # read before the tensors
    recorded = {k: v for k, v in (config.get("harden") or {}).items() if not cfg.left_out_at_default(k, v)}
    same = json.loads(json.dumps({"variant": variant, **cfg.fingerprint()})) == recorded
    chain = config.get("chain", [])
    return WeightDelta.load(folder) if same and len(chain) >= 2 and chain[-2].get("delta_id") == base.delta_id else None


class StoredRowMismatch(ValueError):
    """A stored row was measured with other settings than the ones asked for."""


def stored_row(path: Path, request: dict) -> dict | None:
    """The finished row stored at ``path``, None when there is none (or it holds no measurements yet).

    Raises `StoredRowMismatch` when the stored row records a setting of ``request`` (concept, cases,
    seeds, prompt counts, overrides, the erasure's settings) with another value, so a rerun never mixes
    resolutions, seeds or presets in one folder; settings a row predates are not compared.
    """
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    if "adherence" not in stored:
        return None
    differ = [f"{k} {stored[k]!r} (asked: {v!r})" for k, v in request.items() if k in stored and stored[k] != v]
    differ += [f"{k} {stored.get(k)!r} (asked: {request.get(k)!r})" for k in ("harden_overrides", "method_overrides")
               if (k in request) != (k in stored)]
    if differ:
        raise StoredRowMismatch(f"{path} holds a row measured with other settings: {', '.join(differ)}; "
                                "choose another --out or move it")
    return stored


def quiet(config_cls) -> dict:
    return {"progress": False} if "progress" in config_cls.model_fields else {}


def _harden_cost(metrics: dict) -> dict:
    """A hardening run's iterations (rece, proj: rounds), proj's restoration gap, its training attack's last rounds."""
    cost = {"harden_iterations": len(metrics["rounds"]) if "rounds" in metrics else metrics.get("iterations")}
    cost.update({k: v for k, v in (metrics.get("rounds") or [{}])[-1].items() if k == "restoration_gap"})  # proj
    rounds = metrics.get("attack_rounds", [])
    if rounds:
        cost["harden_attack_steps"], tail = metrics.get("attack_iterations"), rounds[-10:]
        cost["train_attack"] = {"rounds": len(rounds),
                                "last10_loss_first": sum(r["loss_first"] for r in tail) / len(tail),
                                "last10_loss_last": sum(r["loss_last"] for r in tail) / len(tail)}
    return cost


ROBUSTNESS_RESULTS = "robustness-harden"  # beside the bench's cells folder: <concept>[/<seed dir>]/<row>.json
# the folders of stored rows BENCHMARKS.md shows (the TRuST comparison's rows are measured apart)
ROBUSTNESS_FOLDERS = (ROBUSTNESS_RESULTS, "robustness-trust")


def row_label(method: str | None, hardening: str | None, tag: str = "", method_overrides: dict | None = None,
              method_tag: str | None = None, anchor: str | None = None) -> str:
    """``original``, ``<method>`` (with method overrides ``<method><method_tag>``, or ``<method><tag>`` when no
    ``method_tag`` is given; then ``-anchor-<anchor>`` with an anchor) or ``...+<variant><tag>``: a row's name
    and file stem."""
    if method is None:
        return "original"
    base = f"{method}{tag if method_tag is None else method_tag}" if method_overrides else method
    base += f"-anchor-{anchor}" if anchor is not None else ""
    return base if hardening is None else f"{base}+{hardening}{tag}"


def run_rows(pipe, concept: str, variants: list[tuple[str | None, str | None]], out: Path, settings: SamplingSettings,
             detector, detector_concept: str, *, n_cases: int = 16, resurgence_steps: int = 40, per_tier: int = 32,
             n_preserve: int = 48, seed: int = 0, attack_seed: int | None = None, harden_overrides: dict | list[dict] | None = None,
             tag: str = "", reuse: bool = False, announce=None, method_overrides: dict | None = None,
             attack_seeds: list[int] | None = None, screen: bool = False, method_tag: str | None = None,
             anchor: str | None = None, controls: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """The rows of ``variants`` ((method or None, hardening variant or None) pairs) for ``concept``, then
    one row per control of ``controls`` (`erasekit.eval.controls`).

    ``screen``: each row measures only the wording tiers and preservation (`measure_row` with
    ``attacks=False``) and is stored under ``out/screens``; its delta is saved where a full run with
    ``reuse`` finds it.

    A row stored as ``out/<label>.json`` with its measurements is read back; every other row is
    measured by `measure_row` and written atomically as soon as it is done, so a rerun resumes.
    With ``attack_seeds``, both attacks also run on each erasure row's saved delta with each of those seeds
    (`erasekit.eval.attack_seeds`; stored under ``out/attack-seeds``, pooled by the summary).
    """
    from .atomic import write_json

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    jobs = [(m, h, None) for m, h in variants] + [(None, None, c) for c in controls]
    for method, hardening, control in jobs:
        label = (row_label(method, hardening, tag, method_overrides, method_tag, anchor) if control is None
                 else control_label(control, get_concept(concept)))
        path = out / "screens" / f"{label}.json" if screen else out / f"{label}.json"
        request = {"concept": concept, "n_cases": n_cases, "seed": seed, "attack_seed": attack_seed,
                   "per_tier": per_tier, "n_preserve": n_preserve}
        if hardening is not None and harden_overrides:
            request["harden_overrides"] = harden_overrides
        if method is not None and method_overrides:
            request["method_overrides"] = method_overrides
        if method is not None and anchor is not None:
            request["anchor"] = anchor
        if control is not None:
            request["control"] = control
        if method is not None:
            request["erase_settings"] = erase_settings(erase_config(method, seed, method_overrides), get_concept(concept).kind)
        if (row := stored_row(path, request)) is None:
            if announce is not None:
                announce(label)
            row = measure_row(pipe, method, concept, n_cases, resurgence_steps, out, settings, detector,
                              detector_concept, hardening, per_tier, n_preserve, seed, attack_seed, harden_overrides,
                              tag, reuse, method_overrides, attacks=not screen, method_tag=method_tag, anchor=anchor,
                              control=control)
            write_json(path, row)
        for attack in ATTACKS if attack_seeds and label != "original" and not screen else ():
            run_attack_seeds(pipe, out, row, attack, attack_seeds, settings, detector, detector_concept, announce)
        rows.append(row)
    return rows
