"""Class names of a model, and turning what a user types (`207`, `golden retriever`) into ids.

A model's names come from its training run (`class_names.json`) or its pipeline
(`id2label`). A 1,000-class model whose run has no names of its own, or only ImageNet's
folder names (wnids such as n02099601), gets ImageNet's names, read offline from
torchvision's weights metadata. Names match case-insensitively, with `_` and `-` read as
spaces, so `golden retriever`, `Golden_Retriever` and `golden-retriever` all name 207.
"""

from __future__ import annotations

import difflib
import functools
import operator
import re
from collections.abc import Sequence

IMAGENET_CLASSES = 1000
_WNID = re.compile(r"^n\d{8}$")


@functools.lru_cache(maxsize=1)
def imagenet_names() -> tuple[str, ...]:
    """ImageNet-1k's 1,000 class names in class-index order (torchvision's list; no download)."""
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def display_names(own: Sequence[str] | None, num_classes: int) -> list[str] | None:
    """The names to show for a model's classes: its own, ImageNet's for ImageNet models, else None."""
    is_imagenet = num_classes == IMAGENET_CLASSES and (not own or all(_WNID.match(name) for name in own))
    if is_imagenet:
        return list(imagenet_names())
    if own and len(own) != num_classes:
        raise ValueError(
            f"The model has {num_classes} classes but its class names list {len(own)}; the names belong to another model."
        )
    return list(own) if own else None


def id2label_names(id2label: dict | None, num_classes: int) -> list[str] | None:
    """display_names of a pipeline's id2label (int or string ids; a missing id shows as itself)."""
    labels = {int(k): v for k, v in (id2label or {}).items()}
    return display_names([labels.get(i, str(i)) for i in range(num_classes)] if labels else None, num_classes)


def normalize(name: str) -> str:
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def slug(name: str) -> str:
    """A file-name-safe form of a class name: `golden retriever` -> `golden_retriever`."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def resolve_class(spec: str | int, names: Sequence[str] | None, num_classes: int) -> int:
    """The class id that `spec` (an id, or a name from `names`) stands for; ValueError if none.

    Ids may be Python, numpy or one-element torch integers; floats and booleans are refused
    rather than rounded or read as 0 and 1.
    """
    if not isinstance(spec, str):
        if isinstance(spec, bool) or "bool" in str(getattr(spec, "dtype", "")):
            raise ValueError(f"A class is an integer id or a name, got the boolean {spec!r}.")
        try:
            spec = operator.index(spec)
        except TypeError:
            raise ValueError(f"A class is an integer id or a name, got {spec!r} ({type(spec).__name__}).") from None
    text = str(spec).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        class_id = int(text)
        if not 0 <= class_id < num_classes:
            raise ValueError(
                f"Class {class_id} is outside this model's range 0..{num_classes - 1} ({num_classes} classes)."
            )
        return class_id
    if not names:
        raise ValueError(
            f"Class {text!r} is not an id, and this model has no class names; pass an id in 0..{num_classes - 1}."
        )
    lookup = {normalize(name): i for i, name in enumerate(names)}
    key = normalize(text)
    if key in lookup:
        return lookup[key]
    close = difflib.get_close_matches(key, list(lookup), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(names[lookup[c]]) for c in close)}?" if close else "."
    raise ValueError(f"Unknown class {text!r} among this model's {num_classes} class names{hint}")
