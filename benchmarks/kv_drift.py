"""How far a robustness row's cross-attention keys and values moved from the base model's, per kind of prompt.

For the rows of robustness folders (`benchmarks/robustness.py` output: ``FOLDER/<row>.json``), the
relative drift of the UNet's cross-attention keys and values (every ``attn2`` ``to_k``/``to_v``
weight, every token row of the base text encoder's output)::

    drift(P) = sum_l ||X_P (W'_l - W_l)^T||^2 / sum_l ||X_P W_l^T||^2

for two prompt sets P: the concept's attack-case prompts (what the erasure must move) and 200
general captions that do not name it (`erasekit.concepts.general.general_prompts`, the general part
of the ``adv`` hardening's retain prompts).  A row's delta is read from ``FOLDER/deltas/<row>``;
where that is absent it is rebuilt from the row's record (the method's Shapes preset at the row's
seed, or its erasure saved in ``FOLDER/deltas/<method>``, then one hardening variant with the row's
``harden_settings``) and kept only if its delta id is the one the row measured: ids are bytes, so a
rebuild needs the torch thread count the row was made with (``OMP_NUM_THREADS``).

Each row's numbers are written atomically to ``FOLDER/kv-drift/<row>.json`` (keyed by its delta id)
and reused; ``--page`` regenerates `docs/experiments/kv-drift.md` from what is stored for ``FOLDERS``.

    python benchmarks/kv_drift.py benchmarks/results/robustness-harden/circle/cases48 --rows trce trce+adv-unet-it160-kv10
    python benchmarks/kv_drift.py --page
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from erasekit.concepts.general import general_prompts
from erasekit.concepts.packs import get_concept
from erasekit.eval.atomic import write_text
from erasekit.eval.attacks import concept_cases
from erasekit.eval.robustness import quiet
from erasekit.eval.robustness_table import preservation_text
from erasekit.methods.base import get_method
from erasekit.methods.harden import harden, variant_config
from erasekit.methods.retain import text_kv_names
from erasekit.models.conditioning import encode_conditions
from erasekit.models.delta import WeightDelta
from erasekit.models.loading import SHAPES_ID, load_pipeline

ROOT = Path("benchmarks/results/robustness-harden")
FOLDERS = ["circle/cases48", "red/cases48", "red/cases48-seed1"]
PAGE = Path("docs/experiments/kv-drift.md")
N_GENERAL = 200


def kv_weights(pipe) -> dict[str, torch.Tensor]:
    """The UNet's cross-attention key/value weights (`text_kv_names`), by their name in a delta (``unet.<name>``)."""
    params = {n: p.detach() for n, p in pipe.unet.named_parameters()}
    return {f"unet.{n}": params[n] for n in text_kv_names(params, pipe.text_encoder.config.hidden_size)}


def relative_drift(base: dict[str, torch.Tensor], delta: WeightDelta, rows: torch.Tensor) -> float:
    """sum_l ||rows (W'_l - W_l)^T||^2 / sum_l ||rows W_l^T||^2 over the K/V weights ``base``: one share of
    the whole, where the retain term's `erasekit.methods.retain.kv_drift` sums one ratio per weight."""
    moved = total = 0.0
    for name, w in base.items():
        new = delta.tensors[name].to(w.dtype) if name in delta.tensors else w
        moved += (rows @ (new - w).T).pow(2).sum().item()
        total += (rows @ w.T).pow(2).sum().item()
    return moved / total


@torch.no_grad()
def encode(pipe, prompts: list[str]) -> torch.Tensor:
    """Every token row of what the base text encoder hands the UNet for ``prompts`` (`encode_conditions`), stacked."""
    embeds = encode_conditions(pipe, prompts).embeds
    return embeds.reshape(-1, embeds.shape[-1])


def row_delta(pipe, folder: Path, record: dict) -> WeightDelta:
    """The delta ``record`` measured: saved under ``folder/deltas``, else rebuilt and checked by its id."""
    label = record["method"]
    stored = folder / "deltas" / label
    if (stored / "manifest.json").exists():
        delta, how = WeightDelta.load(stored), "saved"
    else:
        delta, how = rebuild(pipe, folder, record), "rebuilt"
    if delta.delta_id != record["delta_id"]:
        raise SystemExit(f"{label}: {how} delta {delta.delta_id} is not the measured {record['delta_id']} "
                         "(other code, or another torch thread count: sums round differently)")
    if how == "rebuilt":
        delta.save(stored)
    return delta


def rebuild(pipe, folder: Path, record: dict) -> WeightDelta:
    """A row's delta made again: its method's Shapes preset at its seed (read from ``folder/deltas/<method>``
    when saved there), then at most one hardening variant with the row's settings."""
    parts = record["method"].split("+")
    if len(parts) > 2 or record.get("method_overrides"):
        raise SystemExit(f"{record['method']}: no saved delta, and only a preset erasure with one hardening step is rebuilt")
    spec = get_concept(record["concept"])
    info = get_method(parts[0])
    if (folder / "deltas" / parts[0] / "manifest.json").exists():
        delta = WeightDelta.load(folder / "deltas" / parts[0])
    else:
        delta = info.erase(pipe, spec, info.config_cls.for_world("shapes", seed=record["seed"], **quiet(info.config_cls)))
    if len(parts) == 2:
        cfg_cls = variant_config(parts[1].split("-")[0])
        delta = harden(pipe, delta, spec, cfg_cls(**{**record["harden_settings"], **quiet(cfg_cls)}))
    return delta


def measure(pipe, folder: Path, row: str) -> dict:
    """The row's drifts, stored under ``folder/kv-drift`` and reused while its delta id matches."""
    record = json.loads((folder / f"{row}.json").read_text())
    path = folder / "kv-drift" / f"{row}.json"
    if path.is_file() and (done := json.loads(path.read_text()))["delta_id"] == record["delta_id"]:
        return done
    delta = row_delta(pipe, folder, record)
    spec = get_concept(record["concept"])
    base = kv_weights(pipe)
    concept_rows = encode(pipe, [c.prompt for c in concept_cases(spec, record["n_cases"], True)])
    general_rows = encode(pipe, general_prompts(pipe, N_GENERAL, exclude_words=list(spec.targets)))
    result = {"row": row, "delta_id": record["delta_id"], "n_general": N_GENERAL,
              "concept_drift": relative_drift(base, delta, concept_rows),
              "general_drift": relative_drift(base, delta, general_rows)}
    write_text(path, json.dumps(result, indent=2) + "\n")
    return result


def page() -> str:
    lines = ["# Cross-attention key/value drift of robustness rows", "",
             "Generated by `python benchmarks/kv_drift.py --page` from the rows measured by "
             "`python benchmarks/kv_drift.py FOLDER --rows ...`. Drift: sum over every cross-attention "
             "`to_k`/`to_v` weight of ||X (W' - W)^T||^2 / ||X W^T||^2, X every token row of the base text "
             "encoder's output for the concept's attack-case prompts (concept) or for "
             f"{N_GENERAL} general captions that do not name it (general). Plain: the row's target rate on "
             "the plain case prompts and under the UnlearnDiffAtk-style attack (the row's own attack seed); "
             "preservation against the original (the robustness tables' columns). Unhardened rows first.", ""]
    for name in FOLDERS:
        folder = ROOT / name
        stored = sorted((folder / "kv-drift").glob("*.json"), key=lambda p: ("+" in p.stem, p.stem))
        if not stored:
            continue
        original = json.loads((folder / "original.json").read_text())
        lines += [f"## {name}", "", "| row | concept drift | general drift | plain | UnlearnDiffAtk | preservation |",
                  "|---|---|---|---|---|---|"]
        for path in stored:
            d = json.loads(path.read_text())
            record = json.loads((folder / f"{d['row']}.json").read_text())
            lines.append(f"| {d['row']} | {d['concept_drift']:.3f} | {d['general_drift']:.4f} | {record['plain']:.2f} | "
                         f"{record['unlearndiff']:.2f} | {preservation_text(record, original)[1]} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", nargs="?", type=Path, help="a robustness folder")
    ap.add_argument("--rows", nargs="+", default=[], help="row names in FOLDER")
    ap.add_argument("--page", action="store_true", help=f"regenerate {PAGE}")
    a = ap.parse_args()
    if a.folder is not None:
        pipe = load_pipeline(SHAPES_ID)
        for row in a.rows:
            d = measure(pipe, a.folder, row)
            print(f"{row}: concept {d['concept_drift']:.3f}, general {d['general_drift']:.4f}", flush=True)
    if a.page:
        print(f"wrote {write_text(PAGE, page())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
