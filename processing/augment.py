"""Training augmentation (PIL random affine + brightness/contrast jitter) with shared current/prior draws.

Defined in `modeling_alta/image_processing_alta.py` (the processor's `train=True` path ships to the Hub) and
re-exported here for dataset code. The reference re-seeds Python's and torch's global RNGs before the current and
again before the prior image of a view; `augment_with_shared_params` draws the parameters once from an explicit
`numpy.random.Generator` and applies them to both, which gives the same pairing without touching global state.
"""

from __future__ import annotations

from modeling_alta.image_processing_alta import (
    AltaAugmentParams,
    apply_augment_params,
    augment_with_shared_params,
    sample_augment_params,
)


__all__ = ["AltaAugmentParams", "apply_augment_params", "augment_with_shared_params", "sample_augment_params"]
