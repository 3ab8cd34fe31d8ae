"""Text prompts for zero-shot classification: the reference CheXpert 5x200 grid, the RSNA pair, custom ensembles.

This file ships with the model as remote code (the zero-shot pipeline resolves named ensembles such as
`"chexpert5x200"` from it), so it imports nothing but the standard library; `processing.prompts` re-exports it.

A *prompt ensemble* maps a class name to the list of prompts that describe it. Zero-shot scoring embeds every
prompt, averages the (unnormalised) embeddings per class and normalises the mean, so the order and the multiplicity
of prompts matter: the reference grid keeps a duplicated Pleural Effusion subtype, which therefore weighs double in
the mean.

The CheXpert grid below reproduces the 489 strings of the official evaluation, typos included ("apperance",
"uppper", "presistent"), because the class embeddings, and therefore the published accuracy, depend on them.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass


PromptEnsemble = dict[str, list[str]]

CHEXPERT_5X200_CLASSES: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

# Per class, the three word lists of the grid in the order they are combined (outer to inner loop); a prompt is the
# three parts joined by single spaces and stripped. Pleural Effusion is combined severity, side, subtype (the
# reference's dict order), so its prompts read "small left bilateral pleural effusion".
CHEXPERT_5X200_GRID: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "Atelectasis": (
        ("", "mild", "minimal"),
        (
            "subsegmental atelectasis",
            "linear atelectasis",
            "trace atelectasis",
            "bibasilar atelectasis",
            "retrocardiac atelectasis",
            "bandlike atelectasis",
            "residual atelectasis",
        ),
        (
            "at the mid lung zone",
            "at the upper lung zone",
            "at the right lung zone",
            "at the left lung zone",
            "at the lung bases",
            "at the right lung base",
            "at the left lung base",
            "at the bilateral lung bases",
            "at the left lower lobe",
            "at the right lower lobe",
        ),
    ),
    "Cardiomegaly": (
        ("",),
        (
            "cardiac silhouette size is upper limits of normal",
            "cardiomegaly which is unchanged",
            "mildly prominent cardiac silhouette",
            "portable view of the chest demonstrates stable cardiomegaly",
            "portable view of the chest demonstrates mild cardiomegaly",
            "persistent severe cardiomegaly",
            "heart size is borderline enlarged",
            "cardiomegaly unchanged",
            "heart size is at the upper limits of normal",
            "redemonstration of cardiomegaly",
            "ap erect chest radiograph demonstrates the heart size is the upper limits of normal",
            "cardiac silhouette size is mildly enlarged",
            "mildly enlarged cardiac silhouette, likely left ventricular enlargement. other chambers are less prominent",
            "heart size remains at mildly enlarged",
            "persistent cardiomegaly with prominent upper lobe vessels",
        ),
        ("",),
    ),
    "Consolidation": (
        ("", "increased", "improved", "apperance of"),
        (
            "bilateral consolidation",
            "reticular consolidation",
            "retrocardiac consolidation",
            "patchy consolidation",
            "airspace consolidation",
            "partial consolidation",
        ),
        (
            "at the lower lung zone",
            "at the upper lung zone",
            "at the left lower lobe",
            "at the right lower lobe",
            "at the left upper lobe",
            "at the right uppper lobe",
            "at the right lung base",
            "at the left lung base",
        ),
    ),
    "Edema": (
        ("", "mild", "improvement in", "presistent", "moderate", "decreased"),
        ("pulmonary edema", "trace interstitial edema", "pulmonary interstitial edema"),
        ("",),
    ),
    "Pleural Effusion": (
        ("", "small", "stable", "large", "decreased", "increased"),
        ("left", "right", "tiny"),
        ("bilateral pleural effusion", "subpulmonic pleural effusion", "bilateral pleural effusion"),
    ),
}

RSNA_POSITIVE_PROMPT = "There is pneumonia"
RSNA_NEGATIVE_PROMPT = "There is no pneumonia"
# The RSNA prompts are tokenised with padding to 10 tokens, no truncation and no `process_text` cleanup.
RSNA_PROMPT_MAX_LENGTH = 10


def prompt_grid(parts: Sequence[Sequence[str]]) -> list[str]:
    """All combinations of the word lists, the first list varying slowest, each joined by spaces and stripped.

    Empty strings in a list stand for "no word here" (the strip removes the spaces they leave at the ends). Equal
    combinations are kept, so a duplicated entry weighs more in the class mean, as in the reference.

    Args:
        parts: the word lists, e.g. `(severities, subtypes, locations)`.

    Returns:
        `prod(len(p) for p in parts)` prompts.
    """
    if not parts:
        raise ValueError("`parts` must hold at least one word list; got an empty sequence")
    for i, words in enumerate(parts):
        if isinstance(words, str) or len(words) == 0:
            raise ValueError(f"`parts[{i}]` must be a non-empty list of strings; got {words!r}")
    return [" ".join(combo).strip() for combo in itertools.product(*parts)]


def chexpert_5x200_prompts(n: int | None = None, rng: random.Random | None = None) -> PromptEnsemble:
    """The reference CheXpert 5x200 prompt ensemble: 210/15/192/18/54 prompts (489 in all).

    The official script asks for n=10000 prompts per class, more than any grid holds, so it uses the full grid in
    order. With a smaller `n` it samples `n` prompts without replacement, as the reference does, but from the
    given `rng` instead of the global `random` state.

    Args:
        n: prompts per class; `None` or at least the grid size keeps the full grid in order.
        rng: the random source for sampling (default `random.Random(0)`); unused for the full grid.

    Returns:
        class name -> prompts, classes in the order of `CHEXPERT_5X200_CLASSES`.
    """
    if n is not None and n < 1:
        raise ValueError(f"`n` must be None or a positive number of prompts per class; got {n}")
    rng = rng if rng is not None else random.Random(0)
    ensemble: PromptEnsemble = {}
    for name in CHEXPERT_5X200_CLASSES:
        prompts = prompt_grid(CHEXPERT_5X200_GRID[name])
        ensemble[name] = rng.sample(prompts, n) if n is not None and n < len(prompts) else prompts
    return ensemble


def rsna_pneumonia_prompts() -> PromptEnsemble:
    """The RSNA pneumonia pair: `{"Pneumonia": ["There is pneumonia"], "No Pneumonia": ["There is no pneumonia"]}`.

    The positive class comes first: the RSNA score is the softmax probability of the first entry.
    """
    return {"Pneumonia": [RSNA_POSITIVE_PROMPT], "No Pneumonia": [RSNA_NEGATIVE_PROMPT]}


def prompts_from_templates(class_names: Iterable[str], templates: Sequence[str] = ("{}",)) -> PromptEnsemble:
    """One prompt per template and class, the way a `hypothesis_template` is applied.

    Args:
        class_names: the classes; each is put into every template with `str.format`.
        templates: strings with one `{}` placeholder, e.g. `("There is {}.", "Findings consistent with {}.")`.

    Returns:
        class name -> `len(templates)` prompts.
    """
    if isinstance(templates, str):
        templates = (templates,)
    if not templates:
        raise ValueError("`templates` must hold at least one template; got an empty sequence")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"every template needs a '{{}}' placeholder for the class name; got {template!r}")
    ensemble = {name: [template.format(name) for template in templates] for name in class_names}
    if not ensemble:
        raise ValueError("`class_names` must hold at least one class; got none")
    return ensemble


def validate_prompt_ensemble(ensemble: Mapping[str, Sequence[str]]) -> PromptEnsemble:
    """Check an ensemble (class -> non-empty list of non-empty strings) and return it as a plain dict of lists.

    A bare string for a class is accepted as a one-prompt list.
    """
    if not isinstance(ensemble, Mapping) or len(ensemble) == 0:
        raise ValueError(f"a prompt ensemble must be a non-empty mapping class -> prompts; got {ensemble!r}")
    checked: PromptEnsemble = {}
    for name, prompts in ensemble.items():
        if not isinstance(name, str):
            raise TypeError(f"prompt ensemble class names must be strings; got {name!r}")
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError(f"class {name!r} of the prompt ensemble has no prompts")
        bad = [p for p in prompts if not isinstance(p, str) or not p.strip()]
        if bad:
            raise ValueError(f"class {name!r} of the prompt ensemble has empty or non-string prompts: {bad!r}")
        checked[name] = prompts
    return checked


def flatten_prompt_ensemble(ensemble: Mapping[str, Sequence[str]]) -> tuple[list[str], list[int], list[str]]:
    """Flatten an ensemble so that all prompts can be embedded in one pass.

    Returns:
        `(prompts, class_index, class_names)`: the prompts class after class, the class position of each prompt
        (`len(prompts)` ints), and the class names in order.
    """
    checked = validate_prompt_ensemble(ensemble)
    prompts: list[str] = []
    class_index: list[int] = []
    for i, values in enumerate(checked.values()):
        prompts.extend(values)
        class_index.extend([i] * len(values))
    return prompts, class_index, list(checked)


def map_prompts(ensemble: Mapping[str, Sequence[str]], fn: Callable[[str], str]) -> PromptEnsemble:
    """Apply a text function to every prompt, e.g. the reference's `process_text` cleanup (injected, not imported,
    because the cleanup lives with the report processing)."""
    return {name: [fn(p) for p in prompts] for name, prompts in validate_prompt_ensemble(ensemble).items()}


@dataclass(frozen=True)
class NamedPromptEnsemble:
    """A prompt ensemble known by name, with the tokenisation its protocol uses.

    Attributes:
        name: the name users pass (`"chexpert5x200"`, `"rsna"`).
        build: returns the ensemble (class -> prompts).
        clean_text: put every prompt through the reference's `process_text` cleanup first.
        max_length: padding (and truncation) length of the prompts, in tokens.
    """

    name: str
    build: Callable[[], PromptEnsemble]
    clean_text: bool
    max_length: int


#: The named ensembles, with the tokenisation of the protocol each one reproduces (alta_reference.md §8).
NAMED_PROMPT_ENSEMBLES: dict[str, NamedPromptEnsemble] = {
    "chexpert5x200": NamedPromptEnsemble("chexpert5x200", chexpert_5x200_prompts, clean_text=True, max_length=128),
    "rsna": NamedPromptEnsemble("rsna", rsna_pneumonia_prompts, clean_text=False, max_length=RSNA_PROMPT_MAX_LENGTH),
}


def named_prompt_ensemble(name: str) -> NamedPromptEnsemble:
    """The named ensemble `name` (see `NAMED_PROMPT_ENSEMBLES`); `ValueError` listing the names otherwise."""
    if name not in NAMED_PROMPT_ENSEMBLES:
        raise ValueError(f"unknown prompt ensemble {name!r}; available: {sorted(NAMED_PROMPT_ENSEMBLES)}")
    return NAMED_PROMPT_ENSEMBLES[name]


__all__ = [
    "CHEXPERT_5X200_CLASSES",
    "CHEXPERT_5X200_GRID",
    "NAMED_PROMPT_ENSEMBLES",
    "RSNA_NEGATIVE_PROMPT",
    "RSNA_POSITIVE_PROMPT",
    "RSNA_PROMPT_MAX_LENGTH",
    "NamedPromptEnsemble",
    "PromptEnsemble",
    "chexpert_5x200_prompts",
    "flatten_prompt_ensemble",
    "map_prompts",
    "named_prompt_ensemble",
    "prompt_grid",
    "prompts_from_templates",
    "rsna_pneumonia_prompts",
    "validate_prompt_ensemble",
]
