"""The two long-lived worker processes of `bench_reference.py`: the reference implementation and this package.

Each worker holds one full-size model (random weights) and answers one JSON command per line on its standard input
with one JSON line on its standard output; everything else either side prints goes to standard error, which the
driver writes to a log file. The driver alternates the two workers round by round, so a ratio compares calls made
under about the same machine load.

The reference worker runs in the reference's own virtual environment (transformers 4.31, timm 0.6.13) and imports
the reference's files unchanged from `--reference-dir`; only run-time shims are applied (see `install_shims`). This
module therefore imports nothing but the standard library and torch at the top, and nothing of this repository on the
reference side.

Both workers build their inputs with `make_inputs` from the same seed, and report a checksum of them, so the driver
can check that both sides computed on the same tensors.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import socket
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch


# Reference files the worker imports, and the ones the zero-shot definitions are read from.
REFERENCE_FILES = (
    "model.py",
    "cxrbert.py",
    "adapter_block.py",
    "loss_functions.py",
    "util/pos_embed.py",
    "util/trainable_params.py",
    "util/misc.py",
    "CheXpert5X200_zeroshot.py",
)
# Top-level definitions taken out of CheXpert5X200_zeroshot.py (the script runs its evaluation when imported).
ZEROSHOT_DEFINITIONS = (
    "CHEXPERT_CLASS_PROMPTS",
    "generate_chexpert_class_prompts",
    "CXRBertTokenizer",
    "process_text",
)
TEXT_FOLDER = "BiomedVLP-CXR-BERT-specialized"


# -- inputs, identical on both sides --------------------------------------------------------------------------------


def make_inputs(spec: dict) -> dict[str, torch.Tensor]:
    """The benchmark's tensors, from `spec` (seed, sizes, report lengths, token ids); same values in both workers.

    Returns:
        `img_big` `[B,3,R,R]` (current frontal at the reconstruction size), `views` `[B,3,3,S,S]` (current lateral,
        prior frontal, prior lateral), `ids`, `attention_mask`, `mlm_inputs`, `mlm_labels` `[B,L]` (reports; MLM copy
        with `mlm_probability` of the tokens between [CLS] and [SEP] replaced by [MASK], labels -100 elsewhere),
        `image_batch` `[max(image_batches),3,S,S]`, `text_ids`, `text_mask` `[text_batch,L]` (no padding) and
        `zeroshot_pixels` `[zeroshot_batch,3,S,S]`.
    """
    gen = torch.Generator().manual_seed(int(spec["seed"]))
    b, s, r, length = spec["batch"], spec["image_size"], spec["reconstruction_size"], spec["text_length"]
    lo, vocab = spec["first_word_id"], spec["vocab_size"]
    out = {
        "img_big": torch.randn(b, 3, r, r, generator=gen),
        "views": torch.randn(b, 3, 3, s, s, generator=gen),
    }
    lengths = torch.tensor(spec["report_lengths"])
    positions = torch.arange(length)[None]
    mask = (positions < lengths[:, None]).long()
    ids = torch.randint(lo, vocab, (b, length), generator=gen) * mask
    ids[:, 0] = spec["cls_id"]
    ids[torch.arange(b), lengths - 1] = spec["sep_id"]
    words = (positions > 0) & (positions < (lengths - 1)[:, None])
    chosen = (torch.rand(b, length, generator=gen) < spec["mlm_probability"]) & words
    out.update(
        ids=ids,
        attention_mask=mask,
        mlm_inputs=torch.where(chosen, torch.full_like(ids, spec["mask_id"]), ids),
        mlm_labels=torch.where(chosen, ids, torch.full_like(ids, -100)),
        image_batch=torch.randn(max(spec["image_batches"]), 3, s, s, generator=gen),
    )
    text_ids = torch.randint(lo, vocab, (spec["text_batch"], length), generator=gen)
    text_ids[:, 0], text_ids[:, -1] = spec["cls_id"], spec["sep_id"]
    out.update(
        text_ids=text_ids,
        text_mask=torch.ones_like(text_ids),
        zeroshot_pixels=torch.randn(spec["zeroshot_batch"], 3, s, s, generator=gen),
    )
    return out


def checksums(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(t.double().sum()) for name, t in sorted(tensors.items())}


class Meter:
    """Wall time, CPU time and context switches (all threads of this process) of one call.

    CPU time above the single-thread figure is time threads spent spinning rather than computing.
    """

    def __enter__(self) -> Meter:
        self.usage = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu = time.process_time()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.voluntary = usage.ru_nvcsw - self.usage.ru_nvcsw
        self.involuntary = usage.ru_nivcsw - self.usage.ru_nivcsw

    def result(self) -> dict:
        return {
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "voluntary_switches": self.voluntary,
            "involuntary_switches": self.involuntary,
        }


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    params = list(model.parameters())  # deduplicated (tied weights once)
    return {"total": sum(p.numel() for p in params), "trainable": sum(p.numel() for p in params if p.requires_grad)}


# -- the reference ----------------------------------------------------------------------------------------------------


def install_shims() -> None:
    """Run-time shims the reference needs on a CPU-only machine (its files are not edited).

    1. torchvision's PyPI wheel is a CUDA build whose compiled ops do not load with CPU torch; its import then fails
       registering fake kernels for those ops (`torchvision::nms`). Registrations of `torchvision::` ops that do not
       exist are skipped; the reference uses only pure-python transforms.
    2. `.cuda()` on tensors and modules returns them unchanged (the evaluation code calls it on every input).
    """
    original = torch.library.register_fake

    def register_fake(op, func=None, /, **kwargs):
        if not (isinstance(op, str) and op.startswith("torchvision::")):
            return original(op, func, **kwargs) if func is not None else original(op, **kwargs)

        def register(fn):
            try:
                return original(op, fn, **kwargs)
            except RuntimeError as err:
                if "does not exist" not in str(err):
                    raise
                return fn

        return register(func) if func is not None else register

    torch.library.register_fake = register_fake
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def start_one_process_group() -> None:
    """The reference's losses call `torch.distributed.nn.all_gather`, so a 1-process gloo group must exist."""
    import torch.distributed as dist

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=0, world_size=1)


def load_zeroshot_definitions(path: Path) -> dict:
    """The named top-level definitions of the reference's CheXpert5X200_zeroshot.py, run unchanged.

    The script loads a checkpoint and a dataset when imported, so only its definitions (and the imports they use)
    are executed, as the parity goldens were made.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    wanted = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in ZEROSHOT_DEFINITIONS:
            wanted.append(node)
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ZEROSHOT_DEFINITIONS for t in node.targets
        ):
            wanted.append(node)
    found = {getattr(n, "name", None) or n.targets[0].id for n in wanted}
    missing = sorted(set(ZEROSHOT_DEFINITIONS) - found)
    if missing:
        raise RuntimeError(f"{path} does not define {missing}; is this the ALTA reference code?")
    import random
    import re
    from typing import Any

    import torch.nn.functional as F
    from nltk.tokenize import RegexpTokenizer
    from transformers import BertTokenizer

    namespace = {"Any": Any, "re": re, "random": random, "torch": torch, "F": F}
    namespace.update(BertTokenizer=BertTokenizer, RegexpTokenizer=RegexpTokenizer)
    # This runs source code, not data: the reference implementation's own definitions from the checkout the user
    # named with --reference-dir, in the reference worker, which imports and runs that checkout's `model` and
    # `util` modules anyway. Only function, class and assignment nodes selected by name are run.
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(path), "exec"), namespace)
    return namespace


class ReferenceSide:
    """The reference's `alta()` model, its trainable set, optimizer groups, loss scaler and zero-shot loop."""

    name = "reference"

    def __init__(self, spec: dict, reference_dir: Path, workspace: Path) -> None:
        install_shims()
        start_one_process_group()
        os.chdir(workspace)  # the reference reads ./BiomedVLP-CXR-BERT-specialized
        sys.path.insert(0, str(reference_dir))
        self._ensure_text_weights(workspace / TEXT_FOLDER, spec["seed"])

        import model as reference_model
        from timm.optim import optim_factory
        from util.misc import NativeScalerWithGradNormCount
        from util.trainable_params import mark_only_ALTA_as_trainable

        torch.manual_seed(spec["seed"])
        self.model = reference_model.alta(norm_pix_loss=True, args=SimpleNamespace(rank=0, world_size=1))
        # The reference keeps missing_token in float16 and relies on CUDA fp16 autocast for `x[missing] = token`;
        # in fp32 that assignment fails, so the (frozen) token is upcast once, exactly (as for the parity goldens).
        self.model.missing_token.data = self.model.missing_token.data.float()
        mark_only_ALTA_as_trainable(self.model)
        groups = optim_factory.param_groups_weight_decay(self.model, 0.05)
        self.optimizer = torch.optim.AdamW(groups, lr=spec["learning_rate"], betas=(0.9, 0.95))
        self.scaler = NativeScalerWithGradNormCount()  # a disabled GradScaler without CUDA; computes the grad norm
        self.mask_ratio = spec["mask_ratio"]
        self.zeroshot = load_zeroshot_definitions(reference_dir / "CheXpert5X200_zeroshot.py")
        self.tokenizer = self.zeroshot["CXRBertTokenizer"].from_pretrained(TEXT_FOLDER)
        self.prompts = self.zeroshot["generate_chexpert_class_prompts"](n=10000)

    @staticmethod
    def _ensure_text_weights(folder: Path, seed: int) -> None:
        """Random full-size CXR-BERT weights for `CXRBertModel.from_pretrained` (written once, atomically)."""
        target = folder / "pytorch_model.bin"
        if target.is_file():
            return
        from cxrbert import CXRBertConfig, CXRBertModel

        torch.manual_seed(seed)
        text = CXRBertModel(CXRBertConfig.from_pretrained(str(folder)))
        partial = folder / f".pytorch_model.bin.{os.getpid()}"
        torch.save(text.state_dict(), partial)
        os.replace(partial, target)

    def describe(self, tensors: dict) -> dict:
        return {"parameters": count_parameters(self.model), "prompts": self.prompts}

    def set_inputs(self, tensors: dict[str, torch.Tensor]) -> None:
        t = tensors
        self.batch = {
            "img": t["img_big"],
            "a_img": t["views"][:, 0],
            "l_img": t["views"][:, 1],
            "la_img": t["views"][:, 2],
            "ids": t["ids"],
            "inputs": t["mlm_inputs"],
            "labels": t["mlm_labels"],
            "attention_mask": t["attention_mask"],
        }
        self.tensors = tensors

    def train_step(self) -> dict[str, float]:
        self.model.train(True)
        losses, _, _ = self.model(self.batch, mask_ratio=self.mask_ratio)
        loss = losses[0] + losses[1] + losses[2] + losses[3]
        self.scaler(loss, self.optimizer, parameters=self.model.parameters(), update_grad=True)
        self.optimizer.zero_grad()
        with torch.no_grad():
            for scale in ("logit_scale", "logit_scale_local1", "logit_scale_local2", "logit_scale_local3"):
                getattr(self.model, scale).clamp_(0, 4.6052)
        return {"loss": float(loss.detach())}

    def embed_images(self, batch: int) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model.forward_img_feature(self.tensors["image_batch"][:batch], 1)

    def embed_texts(self) -> None:
        self.model.eval()
        with torch.no_grad():
            self.model.forward_txt_feature_single(
                {"input_ids": self.tensors["text_ids"], "attention_mask": self.tensors["text_mask"]}
            )

    def _tokenize_prompts(self) -> dict:
        process_text = self.zeroshot["process_text"]
        return {name: process_text(texts, "cpu", self.tokenizer) for name, texts in self.prompts.items()}

    def _class_features(self, processed: dict) -> list[torch.Tensor]:
        # As the reference's loop does for every image batch: each class's prompts through the text tower, mean.
        features = []
        for txt in processed.values():
            if txt["input_ids"].dim() == 2:
                txt["input_ids"] = txt["input_ids"].unsqueeze(0)
                txt["attention_mask"] = txt["attention_mask"].unsqueeze(0)
            mean = self.model.forward_txt_feature(txt).mean(dim=1)
            features.append(torch.nn.functional.normalize(mean, dim=-1, p=2))
        return features

    def encode_prompts(self) -> dict:
        self.model.eval()
        with torch.no_grad():
            processed = self._tokenize_prompts()
            self._class_features(processed)
        tokens = torch.cat(
            [p["attention_mask"].reshape(-1, p["attention_mask"].shape[-1]) for p in processed.values()]
        )
        return {"prompt_tokens_mean": float(tokens.sum(1).float().mean()), "padded_to": tokens.shape[1]}

    def zeroshot_run(self, images: int, batch: int) -> dict:
        """The reference's CheXpert 5x200 loop on `images` images: prompts re-encoded for every image batch."""
        self.model.eval()
        pixels = self.tensors["zeroshot_pixels"]
        batches = []
        with torch.no_grad():
            start = time.perf_counter()
            processed = self._tokenize_prompts()
            tokenize = time.perf_counter() - start
            predictions = []
            for first in range(0, images, batch):
                start = time.perf_counter()
                n = min(batch, images - first)
                img_feature = self.model.forward_img_feature(pixels[:n], 1)
                cos = [(img_feature * text).sum(1) for text in self._class_features(processed)]
                predictions.append(torch.stack(cos, dim=1).argmax(dim=1))
                batches.append(time.perf_counter() - start)
        if sum(len(p) for p in predictions) != images:
            raise RuntimeError("the reference loop produced the wrong number of predictions")
        return {"once_seconds": tokenize, "batch_seconds": batches}


# -- this package -----------------------------------------------------------------------------------------------------


class PackageSide:
    """`AltaForPreTraining` at the `alta-base` preset, `freeze_backbone()`, the training optimizer groups, and the
    package's inference paths (`get_*_features`, `ZeroShotClassifier`)."""

    name = "package"

    def __init__(self, spec: dict, workspace: Path) -> None:
        root = str(Path(__file__).resolve().parents[1])
        if root not in sys.path:  # this checkout's package, whatever is installed
            sys.path.insert(0, root)
        from transformers import BertTokenizer

        from configuration import load_preset
        from modeling_alta.image_processing_alta import AltaImageProcessor
        from modeling_alta.modeling_alta import AltaForPreTraining
        from modeling_alta.processing_alta import AltaProcessor
        from processing.prompts import chexpert_5x200_prompts
        from training.arguments import AlignArguments
        from training.build import build_optimizer
        from training.threads import configure_allocator

        configure_allocator()  # the malloc settings `align.py` runs with (its OpenMP ones come with the environment)
        torch.manual_seed(spec["seed"])
        self.config = load_preset(spec["preset"])
        self.model = AltaForPreTraining(self.config)
        self.model.freeze_backbone()
        # `align.py`'s defaults (the reference's AdamW hyper-parameters, its groups, the fused implementation)
        hyper = AlignArguments(
            output_dir="unused", per_device_train_batch_size=spec["batch"], learning_rate=spec["learning_rate"]
        )
        self.optimizer, _ = build_optimizer(self.model, hyper, world_size=1)
        tokenizer = BertTokenizer.from_pretrained(str(workspace / TEXT_FOLDER))
        self.processor = AltaProcessor(AltaImageProcessor(), tokenizer, max_length=spec["text_length"])
        self.prompts = chexpert_5x200_prompts()
        self.text_length = spec["text_length"]

    def describe(self, tensors: dict) -> dict:
        return {"parameters": count_parameters(self.model), "prompts": self.prompts}

    def set_inputs(self, tensors: dict[str, torch.Tensor]) -> None:
        t = tensors
        b = t["img_big"].shape[0]
        # Slot 0 (the current frontal at 224) is derived by the model from the 448 image, as the reference does.
        slot0 = torch.zeros_like(t["views"][:, :1])
        # The package's collator pads a batch to its longest report (`--pad_to_max_length` restores 128), so its
        # text tensors end there; the reference's dataset pads every report to 128.
        longest = int(t["attention_mask"].sum(1).max())
        self.batch = {
            "pixel_values": torch.cat([slot0, t["views"]], dim=1),
            "reconstruction_pixel_values": t["img_big"],
            "view_mask": torch.ones(b, 4, dtype=torch.bool),
            "input_ids": t["ids"][:, :longest],
            "attention_mask": t["attention_mask"][:, :longest],
            "mlm_input_ids": t["mlm_inputs"][:, :longest],
            "mlm_labels": t["mlm_labels"][:, :longest],
        }
        self.tensors = tensors

    def train_step(self) -> dict[str, float]:
        self.model.train()
        loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scales()
        return {"loss": float(loss.detach())}

    def embed_images(self, batch: int) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model.alta.get_image_features(self.tensors["image_batch"][:batch])

    def embed_texts(self) -> None:
        self.model.eval()
        with torch.inference_mode():
            self.model.alta.get_text_features(self.tensors["text_ids"], self.tensors["text_mask"])

    def _classifier(self):
        from inference.zero_shot import ZeroShotClassifier

        return ZeroShotClassifier(self.model.alta, self.processor, self.prompts, clean_text=True, max_length=128)

    def encode_prompts(self) -> dict:
        from modeling_alta.processing_alta import encode_texts
        from processing.prompts import flatten_prompt_ensemble

        self.model.eval()
        with torch.inference_mode():
            self._classifier().compute_class_embeddings()
        prompts, _, _ = flatten_prompt_ensemble(self.prompts)
        enc = encode_texts(self.processor.tokenizer, prompts, max_length=128, clean_text=True, allow_empty=True)
        mask = torch.as_tensor(enc["attention_mask"])
        return {"prompt_tokens_mean": float(mask.sum(1).float().mean()), "padded_to": mask.shape[1]}

    def zeroshot_run(self, images: int, batch: int) -> dict:
        """The package's path: prompts encoded once (`ZeroShotClassifier.class_embeddings`), then image batches."""
        self.model.eval()
        pixels = self.tensors["zeroshot_pixels"]
        classifier = self._classifier()
        batches = []
        with torch.inference_mode():
            start = time.perf_counter()
            class_embeds = classifier.class_embeddings
            once = time.perf_counter() - start
            predictions = []
            for first in range(0, images, batch):
                start = time.perf_counter()
                n = min(batch, images - first)
                embeds = self.model.alta.get_image_features(pixels[:n]).pooler_output
                predictions.append(classifier.scores_from_embeddings(embeds).predictions)
                batches.append(time.perf_counter() - start)
        if sum(len(p) for p in predictions) != images or class_embeds.shape[0] != len(self.prompts):
            raise RuntimeError("the package's zero-shot produced the wrong number of predictions")
        return {"once_seconds": once, "batch_seconds": batches}


# -- the command loop -------------------------------------------------------------------------------------------------


def serve(side, spec: dict, reply) -> None:
    tensors = make_inputs(spec)
    side.set_inputs(tensors)
    info = side.describe(tensors)
    info.update(
        checksums=checksums(tensors),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"),
        gomp_spincount=os.environ.get("GOMP_SPINCOUNT"),
    )
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    _send(reply, {"ok": True, **info})
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "quit":
            _send(reply, {"ok": True})
            return
        try:
            with Meter() as meter:
                extra = _dispatch(side, command, request)
            _send(reply, {"ok": True, **meter.result(), **(extra or {})})
        except Exception:  # noqa: BLE001 - reported to the driver, which stops the run with the traceback
            _send(reply, {"ok": False, "error": traceback.format_exc()})


def count_step_flops(side) -> dict[str, float]:
    """FLOPs of one training step (`_common.count_flops`: forward and backward). The step is a real one (the
    weights move on, as in any timed round)."""
    from _common import count_flops  # stdlib and torch only: importable from the reference's environment too

    return {"flops": float(count_flops(side.train_step))}


def matmul_rate(size: int = 2048, repeats: int = 6) -> dict[str, float]:
    """FLOP/s of a square fp32 GEMM at this worker's thread count: what the step's matmuls could reach at best."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return {"matmul_flops_per_second": 2.0 * size**3 * repeats / (time.perf_counter() - start)}


def _dispatch(side, command: str, request: dict):
    if command == "train":
        return side.train_step()
    if command == "flops":
        return count_step_flops(side)
    if command == "matmul":
        return matmul_rate()
    if command == "image":
        return side.embed_images(request["batch"])
    if command == "text":
        return side.embed_texts()
    if command == "prompts":
        return side.encode_prompts()
    if command == "zeroshot":
        return side.zeroshot_run(request["images"], request["batch"])
    raise ValueError(f"unknown command {command!r}")


def _send(reply, message: dict) -> None:
    reply.write(json.dumps(message) + "\n")
    reply.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description="a worker of bench_reference.py (not meant to be run by hand)")
    parser.add_argument("--side", choices=["reference", "package"], required=True)
    parser.add_argument("--reference-dir", type=Path)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--spec", required=True, help="JSON: sizes, seed, threads")
    args = parser.parse_args()
    spec = json.loads(args.spec)
    # Replies go to the original stdout; anything printed by either implementation goes to stderr (the log).
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    torch.set_num_threads(spec["threads"])
    try:
        if args.side == "reference":
            side = ReferenceSide(spec, args.reference_dir.resolve(), args.workspace.resolve())
        else:
            side = PackageSide(spec, args.workspace.resolve())
        serve(side, spec, reply)
    except Exception:  # noqa: BLE001 - the driver prints it
        _send(reply, {"ok": False, "error": traceback.format_exc()})
        raise


if __name__ == "__main__":
    main()
