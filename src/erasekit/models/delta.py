"""`WeightDelta`: the result of an erasure method, as the set of tensors it changed.

Storage choice: a delta holds the NEW values of the changed tensors (not the
difference), so applying it is an exact copy and never depends on float
arithmetic.  Its manifest records, per tensor, the name, shape, dtype and the
sha256 fingerprint of the BASE bytes it expects to replace (and of the new
bytes).  Names carry the pipeline component as prefix ("unet.down_blocks...",
"text_encoder..."), so a delta can touch any component.

- `apply_delta` checks every name, shape, dtype and base fingerprint before it
  changes anything (`DeltaMismatchError` otherwise: never a partial load), then
  copies the new values in and keeps the replaced originals (CPU copies) on the
  component modules, so `revert_delta` restores the base bit-for-bit.  Without
  recorded originals, `revert_delta(..., base=...)` takes them from the base
  model after checking their fingerprints.
- Deltas compose: a delta computed on an already-edited model names its
  ``parent``; its base fingerprints then refer to the parent's edited tensors.
  `chain_delta` turns deltas applied in order into one delta against the model.
- On disk: ``delta.safetensors`` + ``manifest.json``, each written to a temp file
  and moved into place with ``os.replace``; `WeightDelta.load` raises
  `DeltaFormatError` for missing, corrupt or mismatched files, and for a manifest
  whose ``delta_id`` is not the one its tensor records hash to.
- Every value must be finite: `save`, `load` and `apply_delta` raise
  `NonFiniteDeltaError` naming the tensors holding NaN or inf.  `save` refuses a
  delta that changes nothing (`EmptyDeltaError`) unless ``allow_empty``.
"""

from __future__ import annotations

import json
import platform
import resource
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from ..world.atomic import save_safetensors, write_text
from .digest import tensor_bytes, tensor_sha256, text_sha256

TENSORS_FILE = "delta.safetensors"
MANIFEST_FILE = "manifest.json"
EXPORT_MANIFEST_FILE = "erasekit_delta.json"
_ORIGINALS_ATTR = "_erasekit_originals"
_SHOW = 5  # mismatches listed in an error message


class DeltaError(Exception):
    """Base class of delta errors."""


class DeltaMismatchError(DeltaError, ValueError):
    """The model does not carry the tensors the delta expects; nothing was changed."""


class DeltaFormatError(DeltaError, ValueError):
    """A saved delta is missing, corrupt or inconsistent."""


class NonFiniteDeltaError(DeltaError, ValueError):
    """A delta holds NaN or inf values (a diverged run); it is never saved, loaded or applied."""


class EmptyDeltaError(DeltaError, ValueError):
    """A delta that changes no tensor: saving it would record an erasure that did nothing."""


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in ``tensors`` holding a NaN or an inf value."""
    return [n for n, t in tensors.items()
            if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all())]


def _check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    bad = nonfinite_tensors(tensors)
    if bad:
        more = f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
        raise NonFiniteDeltaError(f"{what} holds NaN/inf values in {len(bad)} tensor(s) ({', '.join(bad[:_SHOW])}"
                                  f"{more}): the run diverged; rerun it (e.g. with a lower learning rate)")


# ------------------------------------------------------------------ tensors and names
def fingerprint(t: torch.Tensor) -> str:
    """sha256 of a tensor's raw bytes (any dtype, any device)."""
    return tensor_sha256(t)


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(tensor_bytes(a), tensor_bytes(b))


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _component(pipe: Any, name: str) -> nn.Module | None:
    obj = pipe.get(name) if isinstance(pipe, Mapping) else getattr(pipe, name, None)
    return obj if isinstance(obj, nn.Module) else None


def _component_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_buffers()), **dict(module.named_parameters())}


def resolve_tensors(pipe: Any, names: Iterable[str]) -> dict[str, torch.Tensor | None]:
    """Live tensors for 'component.param' names (None where absent).

    ``pipe`` is a pipeline (or any object with component attributes), a mapping of
    component name -> module, or a flat mapping of qualified name -> tensor.
    """
    names = list(names)
    if isinstance(pipe, Mapping) and all(isinstance(v, torch.Tensor) for v in pipe.values()):
        return {n: pipe.get(n) for n in names}
    cache: dict[str, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor | None] = {}
    for n in names:
        comp, _, rest = n.partition(".")
        if comp not in cache:
            module = _component(pipe, comp)
            cache[comp] = _component_tensors(module) if module is not None else {}
        out[n] = cache[comp].get(rest)
    return out


def snapshot(pipe: Any, names: Iterable[str]) -> dict[str, torch.Tensor]:
    """CPU copies of the named tensors: take one before editing, pass it to `from_changes`."""
    found = resolve_tensors(pipe, names)
    missing = [n for n, t in found.items() if t is None]
    if missing:
        raise DeltaMismatchError(f"cannot snapshot tensors missing from the model: {missing[:_SHOW]}")
    return {n: t.detach().cpu().clone() for n, t in found.items()}


# ------------------------------------------------------------------ run information
def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("torch", "diffusers", "transformers", "erasekit"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def peak_memory_bytes() -> int:
    """Peak accelerator memory if CUDA was used, else the process's peak resident size."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


# ------------------------------------------------------------------ manifest
class TensorRecord(BaseModel):
    name: str
    shape: list[int]
    dtype: str
    base_sha256: str
    new_sha256: str


class DeltaManifest(BaseModel):
    format: Literal["erasekit-delta"] = "erasekit-delta"
    format_version: Literal[1] = 1
    delta_id: str
    method: str
    base_model: str | None = None
    parent: str | None = None
    config: dict[str, Any] = {}
    seed: int | None = None
    versions: dict[str, str] = {}
    created_utc: str = ""
    wall_time_s: float | None = None
    peak_memory_bytes: int | None = None
    metrics: dict[str, Any] = {}
    tensors: list[TensorRecord]


def _delta_id(records: list[TensorRecord], parent: str | None) -> str:
    lines = [f"{r.name}:{r.base_sha256}:{r.new_sha256}" for r in sorted(records, key=lambda r: r.name)]
    return text_sha256("\n".join([parent or ""] + lines), 16)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _raise_mismatch(header: str, problems: list[str]) -> None:
    more = f"\n  ... and {len(problems) - _SHOW} more" if len(problems) > _SHOW else ""
    raise DeltaMismatchError(header + "\n  " + "\n  ".join(problems[:_SHOW]) + more)


# ------------------------------------------------------------------ the delta
@dataclass
class WeightDelta:
    """New values of the changed tensors (CPU) plus the manifest describing them."""

    tensors: dict[str, torch.Tensor]
    manifest: DeltaManifest

    @property
    def delta_id(self) -> str:
        return self.manifest.delta_id

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.manifest.tensors]

    @property
    def components(self) -> set[str]:
        return {n.split(".", 1)[0] for n in self.names}

    def __repr__(self) -> str:
        n = sum(t.numel() for t in self.tensors.values())
        return f"WeightDelta(id={self.delta_id}, method={self.manifest.method!r}, tensors={len(self.tensors)}, params={n})"

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_state_dicts(cls, base: Mapping[str, torch.Tensor], edited: Mapping[str, torch.Tensor], *,
                         method: str, config: dict | None = None, seed: int | None = None,
                         base_model: str | None = None, parent: WeightDelta | str | None = None,
                         metrics: dict | None = None, wall_time_s: float | None = None,
                         peak_memory: int | None = None) -> WeightDelta:
        """Delta of the tensors of ``base`` whose bytes differ in ``edited`` (same qualified names)."""
        problems = []
        for n, b in base.items():
            e = edited.get(n)
            if e is None:
                problems.append(f"{n}: missing from the edited model")
            elif e.shape != b.shape or e.dtype != b.dtype:
                problems.append(f"{n}: edited {tuple(e.shape)}/{_dtype_name(e.dtype)} vs base {tuple(b.shape)}/{_dtype_name(b.dtype)}")
        if problems:
            _raise_mismatch("edited tensors do not line up with the originals:", problems)
        tensors, records = {}, []
        for n in sorted(base):
            if bitwise_equal(base[n], edited[n]):
                continue
            new = edited[n].detach().cpu().clone().contiguous()
            tensors[n] = new
            records.append(TensorRecord(name=n, shape=list(new.shape), dtype=_dtype_name(new.dtype),
                                        base_sha256=fingerprint(base[n]), new_sha256=fingerprint(new)))
        parent_id = parent.delta_id if isinstance(parent, WeightDelta) else parent
        manifest = DeltaManifest(
            delta_id=_delta_id(records, parent_id), method=method, base_model=base_model, parent=parent_id,
            config=_jsonable(config or {}), seed=seed, versions=library_versions(),
            created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"), wall_time_s=wall_time_s,
            peak_memory_bytes=peak_memory if peak_memory is not None else peak_memory_bytes(),
            metrics=_jsonable(metrics or {}), tensors=records,
        )
        return cls(tensors=tensors, manifest=manifest)

    @classmethod
    def from_changes(cls, pipe: Any, originals: Mapping[str, torch.Tensor], record: bool = True,
                     **kwargs) -> WeightDelta:
        """Delta between ``originals`` (a `snapshot` taken before editing) and ``pipe`` now.

        With ``record`` the originals are kept on ``pipe`` as if the delta had been
        applied with `apply_delta`, so `revert_delta` works right after a method run.
        """
        current = resolve_tensors(pipe, originals)
        missing = [f"{n}: missing from the model" for n, t in current.items() if t is None]
        if missing:
            _raise_mismatch("the edited model lacks tensors of the snapshot:", missing)
        delta = cls.from_state_dicts(originals, current, **kwargs)  # type: ignore[arg-type]
        if record and not isinstance(pipe, Mapping):
            _record_originals(pipe, delta, {n: originals[n].detach().cpu().clone() for n in delta.names})
        return delta

    # ---------------------------------------------------------------- checks
    def mismatches(self, pipe: Any, expect: Literal["base", "new"] = "base") -> list[str]:
        """Why ``pipe`` does not hold this delta's base (or new) tensors; [] when it does."""
        problems = []
        current = resolve_tensors(pipe, self.names)
        for r in self.manifest.tensors:
            t = current[r.name]
            if t is None:
                problems.append(f"{r.name}: not in the model")
            elif list(t.shape) != r.shape:
                problems.append(f"{r.name}: shape {tuple(t.shape)} in the model, {tuple(r.shape)} in the delta")
            elif _dtype_name(t.dtype) != r.dtype:
                problems.append(f"{r.name}: dtype {_dtype_name(t.dtype)} in the model, {r.dtype} in the delta")
            else:
                want = r.base_sha256 if expect == "base" else r.new_sha256
                if fingerprint(t) != want:
                    problems.append(f"{r.name}: values differ from the delta's {expect} (fingerprint {want[:12]})")
        return problems

    # ---------------------------------------------------------------- files
    def save(self, folder: str | Path, allow_empty: bool = False) -> Path:
        """Write ``delta.safetensors`` and ``manifest.json`` atomically into ``folder``.

        Refuses non-finite values (`NonFiniteDeltaError`) and, unless ``allow_empty``,
        a delta without tensors (`EmptyDeltaError`); nothing is written then.
        """
        if not self.tensors and not allow_empty:
            raise EmptyDeltaError(f"delta {self.delta_id} ({self.manifest.method}) changes no weights (zero "
                                  "iterations? an anchor equal to the target?); nothing was written")
        _check_finite(self.tensors, f"delta {self.delta_id} ({self.manifest.method})")
        folder = Path(folder)
        save_safetensors(folder / TENSORS_FILE, self.tensors, {"format": "erasekit-delta", "delta_id": self.delta_id})
        write_text(folder / MANIFEST_FILE, self.manifest.model_dump_json(indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path, verify: bool = True) -> WeightDelta:
        """Read a saved delta; ``verify`` re-hashes every tensor against the manifest."""
        from safetensors import safe_open

        folder = Path(folder)
        for f in (MANIFEST_FILE, TENSORS_FILE):
            if not (folder / f).is_file():
                raise DeltaFormatError(f"{folder}: missing {f} (not a saved erasekit delta?)")
        try:
            manifest = DeltaManifest.model_validate_json((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
        except ValidationError as err:
            why = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in err.errors()[:_SHOW])
            raise DeltaFormatError(f"{folder / MANIFEST_FILE}: invalid manifest: {why}") from err
        except (ValueError, UnicodeDecodeError) as err:
            raise DeltaFormatError(f"{folder / MANIFEST_FILE}: invalid manifest: {str(err).splitlines()[0]}") from err
        try:
            with safe_open(str(folder / TENSORS_FILE), framework="pt") as fh:
                file_id = (fh.metadata() or {}).get("delta_id")
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as err:  # safetensors raises several types for truncated/garbled files
            raise DeltaFormatError(f"{folder / TENSORS_FILE}: unreadable ({str(err).splitlines()[0]})") from err
        if file_id != manifest.delta_id:
            raise DeltaFormatError(f"{folder}: {TENSORS_FILE} belongs to delta {file_id}, manifest to {manifest.delta_id}")
        recomputed = _delta_id(manifest.tensors, manifest.parent)
        if recomputed != manifest.delta_id:
            raise DeltaFormatError(f"{folder}: the manifest's tensor records hash to delta {recomputed}, not to its "
                                   f"delta_id {manifest.delta_id} (edited or corrupt files?)")
        names = [r.name for r in manifest.tensors]
        if set(tensors) != set(names):
            diff = sorted(set(tensors) ^ set(names))
            raise DeltaFormatError(f"{folder}: tensor names differ between files: {diff[:_SHOW]}")
        for r in manifest.tensors:
            t = tensors[r.name]
            if list(t.shape) != r.shape or _dtype_name(t.dtype) != r.dtype or (verify and fingerprint(t) != r.new_sha256):
                raise DeltaFormatError(f"{folder}: tensor {r.name} does not match its manifest record (corrupt file?)")
        _check_finite(tensors, str(folder))
        return cls(tensors=tensors, manifest=manifest)


# ------------------------------------------------------------------ apply / revert
def _originals_store(module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    return vars(module).setdefault(_ORIGINALS_ATTR, {})


def _record_originals(pipe: Any, delta: WeightDelta, originals: Mapping[str, torch.Tensor]) -> None:
    """Keep the replaced tensors on each component module, keyed by delta id."""
    for comp in delta.components:
        prefix = comp + "."
        _originals_store(_component(pipe, comp))[delta.delta_id] = {
            n[len(prefix):]: t for n, t in originals.items() if n.startswith(prefix)}


def _write(pipe: Any, values: Mapping[str, torch.Tensor]) -> None:
    live = resolve_tensors(pipe, values)
    with torch.no_grad():
        for n, v in values.items():
            live[n].copy_(v)  # type: ignore[union-attr]


def apply_delta(pipe: Any, delta: WeightDelta) -> None:
    """Copy the delta's tensors into ``pipe`` after checking all of them (finite values included); record the originals."""
    _check_finite(delta.tensors, f"delta {delta.delta_id} ({delta.manifest.method})")
    problems = delta.mismatches(pipe, "base")
    if problems:
        if delta.names and not delta.mismatches(pipe, "new"):
            raise DeltaMismatchError(f"delta {delta.delta_id} is already applied to this model")
        parent = delta.manifest.parent
        hint = (f" it was computed on top of delta {parent} (its parent), which is not applied: apply that one "
                "first (on the command line: the parent's folder as an earlier --delta);"
                if parent is not None and parent not in applied_deltas(pipe) else "")
        _raise_mismatch(f"delta {delta.delta_id} ({delta.manifest.method}) does not fit this model;{hint} "
                        "nothing was changed:", problems)
    _record_originals(pipe, delta, snapshot(pipe, delta.names))
    _write(pipe, delta.tensors)


def _recorded_originals(pipe: Any, delta: WeightDelta) -> dict[str, torch.Tensor] | None:
    out: dict[str, torch.Tensor] = {}
    for comp in delta.components:
        module = _component(pipe, comp)
        stored = vars(module).get(_ORIGINALS_ATTR, {}).get(delta.delta_id) if module is not None else None
        if stored is None:
            return None
        out.update({f"{comp}.{k}": v for k, v in stored.items()})
    return out if set(out) == set(delta.names) else None


def revert_delta(pipe: Any, delta: WeightDelta, base: Any = None) -> None:
    """Restore the tensors ``delta`` replaced, bit-for-bit.

    Uses the originals recorded by `apply_delta`; when there are none (e.g. a
    model loaded with the delta already merged), ``base`` must be the base model
    (pipeline, component mapping or flat tensor mapping) whose tensors match the
    delta's base fingerprints.
    """
    problems = delta.mismatches(pipe, "new")
    if problems:
        _raise_mismatch(f"this model does not carry delta {delta.delta_id}; nothing was changed:", problems)
    originals = _recorded_originals(pipe, delta)
    if originals is None:
        if base is None:
            raise DeltaError(f"no originals were recorded for delta {delta.delta_id} on this model; "
                             "pass base=<the base model> to revert it")
        base_problems = delta.mismatches(base, "base")
        if base_problems:
            _raise_mismatch("the given base model is not this delta's base; nothing was changed:", base_problems)
        originals = snapshot(base, delta.names)
    _write(pipe, originals)
    for comp in delta.components:
        vars(_component(pipe, comp)).get(_ORIGINALS_ATTR, {}).pop(delta.delta_id, None)


def applied_deltas(pipe: Any) -> list[str]:
    """Ids of the deltas applied to ``pipe`` with `apply_delta` (oldest first), still not reverted."""
    seen: list[str] = []
    for comp in ("unet", "text_encoder", "text_encoder_2", "vae"):
        module = _component(pipe, comp)
        for delta_id in (vars(module).get(_ORIGINALS_ATTR, {}) if module is not None else {}):
            if delta_id not in seen:
                seen.append(delta_id)
    return seen


def chain_delta(pipe: Any, deltas: Sequence[WeightDelta]) -> WeightDelta:
    """The one delta equal to applying ``deltas`` to ``pipe`` in order (the delta itself when there is one).

    Each is applied with `apply_delta` (even a lone one), so each is checked against the model it expects (``pipe``
    as given, then the earlier deltas; an error names a parent that is not applied before it);
    then all are reverted and ``pipe`` is as it was.  The result runs from ``pipe``'s tensors to
    the last delta's: method ``a+b``, the first delta's parent and base model, and config
    ``chain`` (each delta's id, method, parent and concept) and ``concept`` (names and targets joined).
    """
    if not deltas:
        raise ValueError("an empty chain of deltas")
    applied: list[WeightDelta] = []
    try:
        for d in deltas:
            apply_delta(pipe, d)
            applied.append(d)
        if len(deltas) == 1:
            return deltas[0]
        names = sorted({n for d in deltas for n in d.names})
        edited = snapshot(pipe, names)
    finally:
        for d in reversed(applied):
            revert_delta(pipe, d)
    chain = [{"delta_id": d.delta_id, "method": d.manifest.method, "parent": d.manifest.parent,
              "concept": d.manifest.config.get("concept")} for d in deltas]
    concepts = [c["concept"] for c in chain if isinstance(c["concept"], dict)]
    concept = {"name": " + ".join(dict.fromkeys(str(c.get("name")) for c in concepts)),
               "kind": "/".join(dict.fromkeys(str(c.get("kind")) for c in concepts)),
               "targets": list(dict.fromkeys(t for c in concepts for t in c.get("targets") or []))}
    return WeightDelta.from_state_dicts(
        snapshot(pipe, names), edited, method="+".join(d.manifest.method for d in deltas),
        config={"chain": chain, **({"concept": concept} if concepts else {})},
        base_model=deltas[0].manifest.base_model, parent=deltas[0].manifest.parent,
        metrics={"chain": [d.delta_id for d in deltas]})
