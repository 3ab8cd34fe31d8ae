"""ALTA web demo (Gradio; a Hugging Face Space when this folder is its repository).

    python space/app.py --model outputs/demo/aligned/model      # the model `python -m training.demo` writes
    python space/app.py --model owner/alta-model                 # any ALTA folder or Hub id
    python space/app.py --model M --store archive=path/to/store  # also search an EmbeddingStore

Tabs: zero-shot classification of an image or a study, retrieval over the demo gallery (or a store), the
word-to-patch heatmap of a phrase. The logic lives in `alta_space.py`; this file only builds the page.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


HERE = Path(__file__).resolve().parent
if __package__ in (None, ""):
    # Run as a script (locally, or by Spaces): this folder for `alta_space`, and the repository root for the
    # packages when it is a checkout (a Space built by `space/stage.py` has them next to this file).
    sys.path[:0] = [str(HERE), str(HERE.parent)]
    from alta_space import ENSEMBLES, RESEARCH_NOTICE, TYPED_LABELS, AltaDemo, Hit, write_examples
else:
    from .alta_space import ENSEMBLES, RESEARCH_NOTICE, TYPED_LABELS, AltaDemo, Hit, write_examples

# No usage analytics leave the machine unless the operator turns them on; a medical demo should not phone home.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402
import pandas as pd  # noqa: E402


# A model bundled by `stage.py --model`, else the one `python -m training.demo` writes in a checkout.
DEFAULT_MODEL = next(
    (p for p in (HERE / "model", HERE.parent / "outputs" / "demo" / "aligned" / "model") if p.is_dir()),
    HERE.parent / "outputs" / "demo" / "aligned" / "model",
)
IMAGE_TYPES = [".png", ".jpg", ".jpeg", ".dcm", ".dicom"]
# Fixed colour scales of the heatmap (cosine units); none is chosen from the map itself.
HEATMAP_SCALES = {"±1 (full cosine range)": 1.0, "±0.5": 0.5, "±0.25": 0.25}
THEME = gr.themes.Default(
    # System fonts only: the page loads nothing from font services (privacy, and it works offline).
    font=["ui-sans-serif", "system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)
CSS = "#research-notice {border: 2px solid #b45309; border-radius: 8px; padding: 4px 12px; background: #fffbeb}"


def _fail(err: Exception) -> gr.Error:
    return gr.Error(f"{type(err).__name__}: {err}")


def _hits_table(hits: list[Hit]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": [h.rank for h in hits],
            "score": [round(h.score, 6) for h in hits],
            "id": [str(h.id) for h in hits],
            "label": [h.label or "" for h in hits],
            "report": [h.text or "" for h in hits],
        }
    )


def _hits_images(hits: list[Hit]) -> list[tuple[Any, str]]:
    return [(h.image, f"#{h.rank}  {h.score:.3f}  {h.label}") for h in hits if h.image is not None]


def build_app(demo: AltaDemo, examples: list[list[str | None]] | None = None) -> gr.Blocks:
    """The page: the research-use notice, the model line, and the three tabs (each also an API endpoint:
    `/classify`, `/retrieve_image`, `/retrieve_text`, `/heatmap`)."""

    def classify(frontal, lateral, prior_frontal, prior_lateral, ensemble, labels_text):
        try:
            result = demo.classify(frontal, lateral, prior_frontal, prior_lateral, ensemble, labels_text)
            view = demo.model_view(frontal)
        except (ValueError, TypeError, OSError) as err:
            raise _fail(err) from err
        bars = pd.DataFrame({"class": result.class_names, "probability": result.probabilities})
        table = pd.DataFrame(result.rows(), columns=["class", "probability", "cosine"]).round(4)
        summary = f"Scored as {result.scored_as}. Top class: **{result.class_names[0]}**."
        return bars, table, summary, view

    def retrieve_image(frontal, gallery, k):
        try:
            hits = demo.retrieve_by_image(frontal, gallery, int(k))
        except (ValueError, TypeError, OSError) as err:
            raise _fail(err) from err
        return _hits_table(hits), _hits_images(hits)

    def retrieve_text(text, gallery, k):
        try:
            hits = demo.retrieve_by_text(text, gallery, int(k))
        except (ValueError, TypeError, OSError) as err:
            raise _fail(err) from err
        return _hits_table(hits), _hits_images(hits)

    def heatmap(image, phrase, reduction, scale):
        try:
            picture, sim = demo.heatmap(image, phrase, reduction, HEATMAP_SCALES[scale])
        except (ValueError, TypeError, OSError, KeyError) as err:
            raise _fail(err) from err
        stats = (
            f"Patch cosines of this map: min {sim.min():.3f}, mean {sim.mean():.3f}, max {sim.max():.3f} "
            f"(grid {sim.shape[0]}x{sim.shape[1]}). The colour scale is fixed at {scale}; pale means weak."
        )
        return picture, stats

    ensembles = [*ENSEMBLES, TYPED_LABELS]
    with gr.Blocks(title="ALTA chest X-ray demo") as app:
        gr.Markdown("# ALTA: chest radiographs and reports in one embedding space")
        gr.Markdown(RESEARCH_NOTICE, elem_id="research-notice")
        gr.Markdown(demo.describe(), elem_id="model-line")
        with gr.Tab("Classify", id="classify"):
            with gr.Row():
                with gr.Column():
                    frontal = gr.File(
                        label="Frontal image (PNG, JPEG or DICOM)", file_types=IMAGE_TYPES, elem_id="frontal-file"
                    )
                    with gr.Accordion("More views: the study path (optional)", open=False):
                        lateral = gr.File(label="Lateral", file_types=IMAGE_TYPES)
                        prior_frontal = gr.File(label="Prior frontal", file_types=IMAGE_TYPES)
                        prior_lateral = gr.File(label="Prior lateral", file_types=IMAGE_TYPES)
                    ensemble = gr.Radio(ensembles, value="demo", label="Classes")
                    labels_text = gr.Textbox(
                        label=f"Labels for '{TYPED_LABELS}' (one per line or comma-separated)",
                        value="pleural effusion\ncardiomegaly\nno acute cardiopulmonary process",
                        lines=3,
                    )
                    classify_button = gr.Button("Classify", variant="primary", elem_id="classify-button")
                with gr.Column():
                    bars = gr.BarPlot(
                        x="class",
                        y="probability",
                        sort="-y",
                        y_lim=[0, 1],
                        label="Zero-shot probabilities",
                        elem_id="bars",
                    )
                    summary = gr.Markdown(elem_id="classify-summary")
                    table = gr.Dataframe(label="Scores (probability = softmax of scaled cosines)", elem_id="scores")
                    view = gr.Image(
                        label="What the model sees (frontal)",
                        type="pil",
                        format="png",
                        height=256,
                        elem_id="model-view",
                    )
            if examples:
                gr.Examples(
                    examples=examples,
                    inputs=[frontal, lateral, prior_frontal, prior_lateral],
                    label="Synthetic examples from the demo gallery",
                )
            classify_button.click(
                classify,
                [frontal, lateral, prior_frontal, prior_lateral, ensemble, labels_text],
                [bars, table, summary, view],
                api_name="classify",
            )
        with gr.Tab("Retrieve", id="retrieve"):
            with gr.Row():
                with gr.Column():
                    query_image = gr.File(
                        label="Query image (PNG, JPEG or DICOM)", file_types=IMAGE_TYPES, elem_id="query-file"
                    )
                    image_button = gr.Button("Search with the image", variant="primary", elem_id="retrieve-image")
                    query_text = gr.Textbox(label="Query text", value="moderate cardiomegaly")
                    text_button = gr.Button("Search with the text", elem_id="retrieve-text")
                    gallery = gr.Dropdown(
                        demo.galleries, value=demo.galleries[0], label="Gallery", elem_id="gallery-choice"
                    )
                    k = gr.Slider(1, 10, value=5, step=1, label="Results")
                with gr.Column():
                    hits_table = gr.Dataframe(label="Closest entries (cosine)", elem_id="hits", wrap=True)
                    hits_images = gr.Gallery(
                        label="Their frontal images", columns=5, height=220, format="png", elem_id="hit-images"
                    )
            image_button.click(
                retrieve_image, [query_image, gallery, k], [hits_table, hits_images], api_name="retrieve_image"
            )
            text_button.click(
                retrieve_text, [query_text, gallery, k], [hits_table, hits_images], api_name="retrieve_text"
            )
        with gr.Tab("Heatmap", id="heatmap"):
            with gr.Row():
                with gr.Column():
                    heat_image = gr.File(
                        label="Image (PNG, JPEG or DICOM)", file_types=IMAGE_TYPES, elem_id="heatmap-file"
                    )
                    phrase = gr.Textbox(label="Phrase", value="pleural effusion", elem_id="phrase")
                    reduction = gr.Radio(["mean", "max"], value="mean", label="Words pooled by")
                    scale = gr.Radio(list(HEATMAP_SCALES), value=next(iter(HEATMAP_SCALES)), label="Colour scale")
                    heat_button = gr.Button("Draw the heatmap", variant="primary", elem_id="heatmap-button")
                with gr.Column():
                    heat_picture = gr.Image(
                        label="Word-to-patch similarity", type="pil", format="png", elem_id="heatmap-picture"
                    )
                    heat_stats = gr.Markdown(elem_id="heatmap-stats")
            heat_button.click(
                heatmap, [heat_image, phrase, reduction, scale], [heat_picture, heat_stats], api_name="heatmap"
            )
    return app


def serve(demo: AltaDemo, examples_dir: str | os.PathLike | None = None, **launch_kwargs: Any) -> gr.Blocks:
    """Build the page with gallery examples written to `examples_dir` (default: a temporary folder) and launch it;
    `launch_kwargs` go to `Blocks.launch` (e.g. `prevent_thread_lock=True` to return at once)."""
    folder = Path(examples_dir) if examples_dir else Path(tempfile.mkdtemp(prefix="alta-space-examples-"))
    app = build_app(demo, write_examples(demo.gallery, folder))
    launch_kwargs.setdefault("ssr_mode", False)
    launch_kwargs.setdefault("max_file_size", "50mb")
    app.launch(allowed_paths=[str(folder)], theme=THEME, css=CSS, **launch_kwargs)
    return app


def _store(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--store takes NAME=PATH; got {text!r}")
    return name, path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        default=os.environ.get("ALTA_MODEL", str(DEFAULT_MODEL)),
        help="ALTA model folder or Hub id (env ALTA_MODEL; default: the demo model, %(default)s)",
    )
    parser.add_argument("--gallery-size", type=int, default=36, help="synthetic gallery studies (%(default)s)")
    parser.add_argument("--store", type=_store, action="append", default=[], help="NAME=PATH of an EmbeddingStore")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args(argv)
    if args.model == str(DEFAULT_MODEL) and not DEFAULT_MODEL.is_dir():
        parser.error(f"no model at {DEFAULT_MODEL}: run `python -m training.demo` first, or pass --model")
    demo = AltaDemo.load(args.model, gallery_size=args.gallery_size, stores=dict(args.store))
    serve(demo, server_name=args.host, server_port=args.port)


if __name__ == "__main__":
    main()
