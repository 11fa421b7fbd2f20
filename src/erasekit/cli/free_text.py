"""Concepts given on the command line: ``--target "cowboy hat" [--synonym ...] [--anchor ...] [--preserve ...] [--kind ...]``.

`free_text_concept` builds a `ConceptSpec` named ``custom/<target>``:

- targets: the target, then its synonyms;
- templates: in the Shapes world its caption templates with the phrase in the
  noun-phrase slot ("a red star" -> "a picture of a red star"); elsewhere a few
  per kind (objects "a photo of a {}" with a/an agreement, or "a photo of {}"
  when the target brings its own article; styles "a painting in the style of {}";
  other kinds "a photo of {}");
- preserve: the ``--preserve`` prompts plus ``GENERAL_PRESERVE`` of the model's
  general prompts (COCO captions for SD, random captions in the Shapes world)
  that name no target (`with_general_preserve`, once the model is loaded).
"""

from __future__ import annotations

import re
from typing import Optional

GENERAL_PRESERVE = 64
_ARTICLE = re.compile(r"^(a|an|the)\s", re.IGNORECASE)
_SD_TEMPLATES = {
    "object": ["a photo of a {}", "a {} in a photo", "an illustration of a {}", "a close-up photo of a {}",
               "a drawing of a {}", "a painting of a {}", "a cartoon of a {}", "a rendering of a {}"],
    "object_with_article": ["{}", "a photo of {}", "an illustration of {}", "a close-up photo of {}",
                            "a drawing of {}", "a painting of {}", "a cartoon of {}", "a rendering of {}"],
    "style": ["a painting in the style of {}", "an artwork by {}", "a landscape painted by {}",
              "a portrait in the style of {}", "an image in the style of {}"],
    "other": ["{}", "a photo of {}", "an image of {}", "a picture of {}", "a painting of {}"],
}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "concept"


def _templates(target: str, kind: str, world: str) -> tuple[list[str], bool]:
    """(templates, article agreement) for a free-text target."""
    if world == "shapes":
        from ..world.vocabulary import load_vocabulary

        return [t.replace("{np}", "{}") for t in load_vocabulary().templates], False
    if kind in ("object", "instance"):
        if _ARTICLE.match(target):
            return _SD_TEMPLATES["object_with_article"], False
        return _SD_TEMPLATES["object"], True
    return _SD_TEMPLATES["style" if kind == "style" else "other"], False


def free_text_concept(target: str, synonyms: Optional[list[str]] = None, anchor: Optional[str] = None,
                      preserve: Optional[list[str]] = None, kind: Optional[str] = None, world: str = "sd"):
    """The `ConceptSpec` of a target phrase given on the command line (module docstring)."""
    from ..concepts.spec import ConceptSpec

    kind = kind or "object"
    templates, agreement = _templates(target.strip(), kind, world)
    return ConceptSpec.from_dict({
        "name": f"custom/{slug(target)}", "kind": kind, "targets": [target, *(synonyms or [])],
        "anchor": anchor or "", "templates": templates, "preserve": list(preserve or []),
        "article_agreement": agreement, "description": f"Given on the command line: {target!r}.",
    })


def with_general_preserve(spec, pipe, n: int = GENERAL_PRESERVE):
    """``spec`` with ``n`` of the model's general prompts that name none of its targets added to ``preserve``."""
    from ..concepts.general import general_prompts

    general = [p for p in general_prompts(pipe, n * 2, exclude_words=spec.targets) if not spec.names_target(p)][:n]
    return spec.model_copy(update={"preserve": [*spec.preserve, *general]})
