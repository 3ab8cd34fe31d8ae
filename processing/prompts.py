"""Text prompts for zero-shot classification (the CheXpert 5x200 grid, the RSNA pair, custom ensembles).

Defined in `modeling_alta/prompts_alta.py`, which ships with the model so that the zero-shot pipeline knows the named
ensembles where this package is not installed; re-exported here for the dataset side.
"""

from modeling_alta.prompts_alta import (
    CHEXPERT_5X200_CLASSES,
    CHEXPERT_5X200_GRID,
    NAMED_PROMPT_ENSEMBLES,
    RSNA_NEGATIVE_PROMPT,
    RSNA_POSITIVE_PROMPT,
    RSNA_PROMPT_MAX_LENGTH,
    NamedPromptEnsemble,
    PromptEnsemble,
    chexpert_5x200_prompts,
    flatten_prompt_ensemble,
    map_prompts,
    named_prompt_ensemble,
    prompt_grid,
    prompts_from_templates,
    rsna_pneumonia_prompts,
    validate_prompt_ensemble,
)


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
