"""processing package (repository-level; not shipped to the Hub): radiograph I/O, report text, augmentation and
pretraining collation. The processors themselves are defined in `modeling_alta/` (they ship to the Hub) and are
re-exported here."""

from modeling_alta.configuration_alta import STUDY_SLOTS
from modeling_alta.image_processing_alta import AltaImageProcessor
from modeling_alta.processing_alta import AltaProcessor

from .augment import AltaAugmentParams, apply_augment_params, augment_with_shared_params, sample_augment_params
from .collate import IGNORE_INDEX, AltaPretrainingCollator, mask_tokens
from .cxr_io import load_image, load_rsna_dicom, read_dicom
from .reports import process_text, shuffle_sentences, split_sentences, tokenize_for_evaluation


__all__ = [
    "IGNORE_INDEX",
    "STUDY_SLOTS",
    "AltaAugmentParams",
    "AltaImageProcessor",
    "AltaPretrainingCollator",
    "AltaProcessor",
    "apply_augment_params",
    "augment_with_shared_params",
    "load_image",
    "load_rsna_dicom",
    "mask_tokens",
    "process_text",
    "read_dicom",
    "sample_augment_params",
    "shuffle_sentences",
    "split_sentences",
    "tokenize_for_evaluation",
]
