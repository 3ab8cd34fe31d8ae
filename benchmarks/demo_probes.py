"""Probes of the demo's backbone stage: does its masked modeling need the image, and what do its features hold?

    python benchmarks/demo_probes.py text                                   # ~1 min: can the MLM be solved from text?
    python benchmarks/demo_probes.py features --run outputs/demo            # linear probe of each run's image features
    python benchmarks/demo_probes.py features --run outputs/demo --model_dir outputs/probe/x/model

`text`: a bag-of-words logistic regression reads the label of a synthetic report (six classes, chance 0.167) from
the words an MLM copy leaves visible, under the reference masking rule (each token with probability p) and with the
demo's finding words (`processing.demo_data.FINDING_WORDS`) masked in every report. Near 1.0 means the masked words
are predictable from the rest of the report, so the image-conditioned MLM can be solved without the image.

`features`: the vision tower's pooled study features (before the projection head; all views, no patch masking) of
the demo's train split fit a logistic regression that is scored on its test split; the same on the raw current
frontal downsampled to 16x16 pixels, the peer that says how much a probe can get from the pixels alone.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text.lower())  # the demo vocabulary's word rule (training/demo.py)


def _reports(num: int, seed: int) -> list[tuple[list[str], str]]:
    from processing.demo_data import DEMO_CLASSES, generate_study, strip_boilerplate

    out = []
    for i in range(num):
        label = DEMO_CLASSES[i % len(DEMO_CLASSES)]
        study = generate_study(label, np.random.default_rng([seed, i]), image_size=32)
        out.append((_words(strip_boilerplate(study.report)), label))
    return out


def text_leak(num_train: int = 1800, num_test: int = 600) -> dict[str, float]:
    """Accuracy of the label read from the visible words of MLM copies, per masking rule."""
    from sklearn.linear_model import LogisticRegression

    from processing.demo_data import FINDING_WORDS

    train, test = _reports(num_train, 0), _reports(num_test, 1)
    vocab = {w: i for i, w in enumerate(sorted({w for t, _ in train + test for w in t}))}

    def features(data, p: float, always: set[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = np.zeros((len(data), len(vocab)), np.float32)
        for row, (tokens, _) in enumerate(data):
            for word in tokens:
                if word not in always and rng.random() >= p:
                    x[row, vocab[word]] += 1
        return x, np.array([label for _, label in data])

    results = {}
    for rule, always in (("reference", set()), ("finding_words", set(FINDING_WORDS))):
        for p in (0.0, 0.5):
            rng = np.random.default_rng(0)
            x_train, y_train = features(train, p, always, rng)
            x_test, y_test = features(test, p, always, rng)
            clf = LogisticRegression(max_iter=3000).fit(x_train, y_train)
            results[f"{rule}, p={p}"] = float(clf.score(x_test, y_test))
    return results


def _studies(split) -> list[dict]:
    from modeling_alta.configuration_alta import STUDY_SLOTS

    return [{slot: row[slot] for slot in STUDY_SLOTS if row[slot] is not None} for row in split]


@torch.no_grad()
def study_features(model_dir: str, split, batch_size: int = 48) -> np.ndarray:
    """Pooled vision features `[N, hidden]` of a demo split's whole studies (no patch masking)."""
    from modeling_alta import AltaModel, AltaProcessor

    model = AltaModel.from_pretrained(model_dir).eval()
    processor = AltaProcessor.from_pretrained(model_dir)
    studies = _studies(split)
    out = []
    for start in range(0, len(studies), batch_size):
        inputs = processor.image_processor(studies[start : start + batch_size], return_tensors="pt")
        vision = model.vision_model(inputs["pixel_values"], view_mask=inputs["view_mask"])
        out.append(vision.pooler_output.float().numpy())
    return np.concatenate(out)


def pixel_features(split, side: int = 16) -> np.ndarray:
    """The current frontal downsampled to `side` x `side` pixels, flattened `[N, side*side]`."""
    from PIL import Image

    return np.stack(
        [np.asarray(row["frontal"].convert("L").resize((side, side), Image.BILINEAR), np.float32) for row in split]
    ).reshape(len(split), -1)


def linear_probe(train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str]) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000, C=1.0))
    return float(clf.fit(train_x, train_y).score(test_x, test_y))


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("probe", choices=("text", "features"))
    parser.add_argument("--run", default="outputs/demo", help="a demo output folder (its data/ and runs)")
    parser.add_argument("--model_dir", action="append", help="model folders to probe (default: the demo's runs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.probe == "text":
        results = text_leak()
        for name, value in results.items():
            print(f"label from the visible words, masking {name}: {value:.3f} (chance 0.167)")
        print(f"({time.perf_counter() - started:.0f} s)")
        return results
    import datasets

    data = datasets.load_from_disk(str(Path(args.run) / "data"))
    train, test = data["train"], data["test"]
    results = {
        "raw 16x16 pixels": linear_probe(pixel_features(train), train["label"], pixel_features(test), test["label"])
    }
    model_dirs = args.model_dir or [str(p.parent) for p in sorted(Path(args.run).glob("*/model/config.json"))]
    for model_dir in model_dirs:
        results[model_dir] = linear_probe(
            study_features(model_dir, train), train["label"], study_features(model_dir, test), test["label"]
        )
    for name, value in results.items():
        print(f"linear probe {name}: {value:.3f}")
    return results


if __name__ == "__main__":
    main()
