"""inference package (repository-level; not shipped to the Hub): using an ALTA model on your data.

- `inference.embedding`: embed images, studies and reports (in memory or into an on-disk store);
- `inference.embed_archive` (`alta-embed`): a DICOM tree, image folder, reference CSV or `datasets` dataset into a
  store, on one process or many (`accelerate launch`), resumable after a crash;
- `inference.store`: the sharded on-disk `EmbeddingStore` (atomic shards and index, several writers, confined paths);
- `inference.search`: exact top-k search over in-memory or on-disk galleries, within a memory budget;
- `inference.zero_shot`: zero-shot classification with prompt ensembles, class embeddings computed once;
- `inference.heatmaps`: word-to-patch similarity maps;
- `inference.onnx_export` (`alta-export-onnx`) and `inference.onnx_encoder`: the towers as ONNX files, and embedding
  with onnxruntime through the same processor.
"""

from .embedding import embed_images, embed_texts, load_model_and_processor
from .heatmaps import word_patch_similarity
from .search import TopKResult, exact_topk, search
from .store import EmbeddingStore, EmbeddingStoreWriter, write_embedding_store
from .zero_shot import ZeroShotClassifier, ZeroShotPrediction, prompt_preset


__all__ = [
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "TopKResult",
    "ZeroShotClassifier",
    "ZeroShotPrediction",
    "embed_images",
    "embed_texts",
    "exact_topk",
    "load_model_and_processor",
    "prompt_preset",
    "search",
    "word_patch_similarity",
    "write_embedding_store",
]
