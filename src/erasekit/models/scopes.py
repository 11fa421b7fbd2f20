"""Parameter scopes: which UNet parameters a method is allowed to change.

A `ParameterScope` is a name plus a rule that looks at each parameter together
with the module that owns it and the attention layer (if any) around it.  Rules
use module structure, not hard-coded layer names, so the same scope selects the
right tensors on SD-1.x, SD-2.x and SDXL UNets:

- an *attention layer* is a module with ``to_q``, ``to_k`` and ``to_v`` children;
- it is a *cross-attention* layer when its ``is_cross_attention`` flag is true
  (diffusers sets it when the keys come from the text); modules without the
  flag fall back to their name (``attn2``);
- every other attention layer is *self-attention* (``attn1``).

Built-in scopes: ``cross_attn_kv`` (UCE/TRCE stage 1), ``cross_attn_q``,
``cross_attn_qkv`` (TRuST), ``cross_attn`` (ESD-x), ``self_attn``, ``visual``
(TRCE stage 2: self-attention + cross-attention ``to_q``), ``non_cross_attn``
(ESD-u / KSCU nudity: every Linear/Conv weight and bias outside cross-attention)
and ``all``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .registry import Registry, UnknownNameError

_LINEAR_CONV = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class UnknownScopeError(UnknownNameError):
    """No scope has this name; the message lists close matches."""


# ------------------------------------------------------------------ structure
def is_attention(module: nn.Module) -> bool:
    return all(isinstance(getattr(module, n, None), nn.Module) for n in ("to_q", "to_k", "to_v"))


def is_cross_attention(name: str, module: nn.Module) -> bool:
    flag = getattr(module, "is_cross_attention", None)
    if flag is None:
        return name.rsplit(".", 1)[-1] == "attn2"
    return bool(flag)


def attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Every attention layer of ``unet`` by qualified module name."""
    return {n: m for n, m in unet.named_modules() if n and is_attention(m)}


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The cross-attention layers (``attn2``; 16 in SD-1.x) by qualified module name."""
    return {n: m for n, m in attention_layers(unet).items() if is_cross_attention(n, m)}


def self_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """The self-attention layers (``attn1``) by qualified module name."""
    return {n: m for n, m in attention_layers(unet).items() if not is_cross_attention(n, m)}


@dataclass(frozen=True)
class ParamSite:
    """Where a parameter lives: owning module, and the enclosing attention layer if any."""

    name: str  # qualified parameter name, e.g. "down_blocks.0.attentions.0...attn2.to_k.weight"
    module: nn.Module  # module that owns the parameter directly
    attn_kind: str | None  # "cross", "self" or None
    attn_child: str | None  # first path element inside the attention layer ("to_k", "to_out", ...)


def _sites(unet: nn.Module):
    attn = attention_layers(unet)
    cross = set(cross_attention_layers(unet))
    modules = dict(unet.named_modules())
    for pname, _ in unet.named_parameters():
        owner = pname.rsplit(".", 1)[0] if "." in pname else ""
        kind = child = None
        prefix = owner
        while prefix:  # innermost enclosing attention layer
            if prefix in attn:
                kind = "cross" if prefix in cross else "self"
                child = pname[len(prefix) + 1 :].split(".", 1)[0]
                break
            prefix = prefix.rsplit(".", 1)[0] if "." in prefix else ""
        yield ParamSite(pname, modules[owner], kind, child)


# ------------------------------------------------------------------ scopes
@dataclass(frozen=True)
class ParameterScope:
    """A named rule selecting parameters of a UNet (like a peft target spec)."""

    name: str
    rule: Callable[[ParamSite], bool]
    description: str = ""

    def select(self, unet: nn.Module, prefix: str = "") -> dict[str, nn.Parameter]:
        """Selected parameters by qualified name (``prefix`` is prepended, e.g. 'unet.')."""
        params = dict(unet.named_parameters())
        return {prefix + s.name: params[s.name] for s in _sites(unet) if self.rule(s)}

    def modules(self, unet: nn.Module) -> dict[str, nn.Module]:
        """The modules that directly own at least one selected parameter."""
        out: dict[str, nn.Module] = {}
        for s in _sites(unet):
            if self.rule(s):
                out.setdefault(s.name.rsplit(".", 1)[0] if "." in s.name else "", s.module)
        return out

    def count(self, unet: nn.Module) -> int:
        """Number of scalar parameters selected."""
        return sum(p.numel() for p in self.select(unet).values())


def _weight(s: ParamSite) -> bool:
    return s.name.endswith(".weight")


def _cross(children: set[str] | None = None, weights_only: bool = True):
    def rule(s: ParamSite) -> bool:
        if s.attn_kind != "cross" or (children is not None and s.attn_child not in children):
            return False
        return _weight(s) if weights_only else True

    return rule


SCOPES: Registry[ParameterScope] = Registry("parameter scope", UnknownScopeError)


def register_scope(scope: ParameterScope, overwrite: bool = False) -> ParameterScope:
    return SCOPES.add(scope.name, scope, overwrite=overwrite)


for _scope in (
    ParameterScope("cross_attn_kv", _cross({"to_k", "to_v"}), "cross-attention to_k/to_v weights (UCE, TRCE stage 1)"),
    ParameterScope("cross_attn_q", _cross({"to_q"}), "cross-attention to_q weights"),
    ParameterScope("cross_attn_qkv", _cross({"to_q", "to_k", "to_v"}), "cross-attention q/k/v weights (TRuST)"),
    ParameterScope("cross_attn", _cross(None, weights_only=False), "every cross-attention parameter (ESD-x)"),
    ParameterScope("self_attn", lambda s: s.attn_kind == "self", "every self-attention parameter"),
    ParameterScope(
        "visual",
        lambda s: s.attn_kind == "self" or (s.attn_kind == "cross" and s.attn_child == "to_q"),
        "self-attention + cross-attention to_q (TRCE stage 2)",
    ),
    ParameterScope(
        "non_cross_attn",
        lambda s: s.attn_kind != "cross" and isinstance(s.module, _LINEAR_CONV),
        "every Linear/Conv weight and bias outside cross-attention (ESD-u)",
    ),
    ParameterScope("all", lambda s: True, "every parameter"),
):
    register_scope(_scope)


def list_scopes() -> list[str]:
    return SCOPES.names()


def get_scope(name: str | ParameterScope) -> ParameterScope:
    """A registered scope by name (a `ParameterScope` passes through)."""
    if isinstance(name, ParameterScope):
        return name
    return SCOPES.get(name)
