"""`training/align.py`: smoke run, exact resume, two real CPU processes equal one, faults, the loss module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from configuration import load_preset
from modeling_alta import AltaForPreTraining
from training.align import NonFiniteLossError, main, parse_args
from training.build import learning_rate_at
from training.data import GlobalBatchSampler
from training.losses import AltaPretrainingLoss

from ..conftest import REPO_ROOT
from .synthetic import write_dataset


SMALL = json.dumps({"vision_config": {"image_size": 32, "reconstruction_image_size": 64}})


def _argv(parity_dir: Path, dataset: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--preset", "alta-tiny",
        "--tokenizer_name_or_path", str(parity_dir / "BiomedVLP-CXR-BERT-specialized"),
        "--config_overrides", SMALL,
        "--dataset_path", str(dataset),
        "--output_dir", str(out),
        "--per_device_train_batch_size", "4",
        "--max_length", "32",
        "--learning_rate", "1e-3",
        "--warmup_steps", "1",
        "--schedule_steps", "10",
        "--report_to", "none",
        "--logging_steps", "1",
        "--cpu",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("studies"), n=12)


def _trainable(folder: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(folder / "model.safetensors"))
    return {k: v for k, v in weights.items() if "adapter" in k or "projection" in k or "logit_scale" in k}


def test_smoke_run_writes_a_loadable_folder(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    from transformers import AutoModel

    result = main(_argv(parity_dir, dataset, tmp_path / "run", "--max_steps", "2", "--report_to", "tensorboard"))
    assert result["global_step"] == 2 and result["skipped_studies"] == 0
    assert set(result["final_losses"]) >= {"contrastive_loss", "local_loss", "reconstruction_loss", "mlm_loss"}
    folder = Path(result["model_dir"])
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__name__ == "AltaModel"
    assert (folder / "processor_config.json").is_file() or (folder / "preprocessor_config.json").is_file()
    assert list((tmp_path / "run").rglob("events.out.tfevents*")), "TensorBoard logs are missing"
    counts = result["trainable_parameters"], result["total_parameters"]
    assert 0 < counts[0] < counts[1]


def test_resume_continues_exactly(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    # Uninterrupted: 6 steps (2 epochs of 3 batches); checkpoints every 2 steps.
    # Batches grouped by report length (the sampler's resume path is the same with and without it).
    grouped = ("--group_by_length", "true")
    full = main(_argv(parity_dir, dataset, tmp_path / "a", "--max_steps", "6", "--checkpointing_steps", "2", *grouped))
    # Interrupted: stop after 4 steps (mid-epoch 2), then resume from the latest checkpoint to step 6.
    first = main(
        _argv(parity_dir, dataset, tmp_path / "b", "--max_steps", "4", "--checkpointing_steps", "2", *grouped)
    )
    assert first["global_step"] == 4
    resumed = main(
        _argv(
            parity_dir, dataset, tmp_path / "b", "--max_steps", "6", "--checkpointing_steps", "2",
            "--resume_from_checkpoint", "latest", *grouped,
        )
    )  # fmt: skip
    state = json.loads((tmp_path / "b" / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    uninterrupted = json.loads((tmp_path / "a" / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert [s["total_loss"] for s in state["losses"]] == pytest.approx(
        [s["total_loss"] for s in uninterrupted["losses"]], rel=1e-6
    )
    a, b = _trainable(Path(full["model_dir"])), _trainable(Path(resumed["model_dir"]))
    assert a.keys() == b.keys() and a
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-6, rtol=1e-5, msg=key)
    kept = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000004", "step-00000006"]


def test_checkpoint_rotation_keeps_last_k(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    main(_argv(parity_dir, dataset, tmp_path / "r", "--max_steps", "3", "--checkpointing_steps", "1",
               "--checkpoints_total_limit", "2"))  # fmt: skip
    kept = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    assert kept == ["step-00000002", "step-00000003"]


def test_two_cpu_processes_equal_one(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    # Length-grouped batches, each process's padded to its own longest report: still the one-process run.
    common = ["--max_steps", "2", "--text_dropout", "0.0", "--augment", "false", "--group_by_length", "true"]
    one = main(_argv(parity_dir, dataset, tmp_path / "one", *common))
    argv = _argv(parity_dir, dataset, tmp_path / "two", *common)
    argv[argv.index("--per_device_train_batch_size") + 1] = "2"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(29500 + os.getpid() % 1000),
        str(REPO_ROOT / "training" / "align.py"), *argv,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "2 processes x 2 studies" in proc.stderr
    two = json.loads((tmp_path / "two" / "model" / "train_results.json").read_text())
    for key in ("contrastive_loss", "local_loss", "reconstruction_loss", "mlm_loss"):
        assert two["final_losses"][key] == pytest.approx(one["final_losses"][key], rel=1e-5, abs=1e-6), key
    a, b = _trainable(Path(one["model_dir"])), _trainable(tmp_path / "two" / "model")
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)


def test_unreadable_study_is_skipped_and_counted(tmp_path: Path, parity_dir: Path) -> None:
    data = write_dataset(tmp_path / "bad", n=8, corrupt=(1,))
    result = main(_argv(parity_dir, data, tmp_path / "run", "--max_steps", "2"))
    assert result["global_step"] == 2
    assert result["skipped_studies"] == 1


def test_loss_weights_in_config_overrides_are_refused(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    argv = _argv(parity_dir, dataset, tmp_path / "out", "--max_steps", "1")
    argv[argv.index("--config_overrides") + 1] = json.dumps({**json.loads(SMALL), "mlm_loss_weight": 0.0})
    with pytest.raises(ValueError, match=r"sets \['mlm_loss_weight'\].*pass --mlm_loss_weight instead"):
        main(argv)


def test_non_finite_loss_stops_and_names_a_good_checkpoint(tmp_path: Path, parity_dir: Path, dataset: Path, caplog):
    from training.arguments import AlignArguments
    from training.checkpoints import resolve_checkpoint

    # warm-up makes step 1's lr 0; step 2 applies lr 1e30 (weights ~1e30, still finite) and step 3's loss is NaN:
    # step-2 holds the weights that blew up, so only step-1 is good.
    with pytest.raises(NonFiniteLossError) as info:
        main(_argv(parity_dir, dataset, tmp_path / "nan", "--max_steps", "4", "--checkpointing_steps", "1",
                   "--learning_rate", "1e30"))  # fmt: skip
    message = str(info.value)
    assert message.startswith("Stopped at step 3: non-finite loss")
    assert "marked ['step-00000002'] non-finite" in message
    assert message.endswith(f"the last good checkpoint is {tmp_path / 'nan' / 'checkpoints' / 'step-00000001'}.")
    flag = tmp_path / "nan" / "checkpoints" / "step-00000002" / "non_finite.json"
    assert "step 3" in json.loads(flag.read_text())["reason"]
    # --resume_from_checkpoint latest skips the poisoned checkpoint and says why
    caplog.clear()
    chosen = resolve_checkpoint("latest", AlignArguments(output_dir=str(tmp_path / "nan")))
    assert chosen.name == "step-00000001"
    assert any("skipping checkpoint" in r.message and "non-finite loss" in r.message for r in caplog.records)


def test_ctrl_c_saves_a_checkpoint(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    out = tmp_path / "int"
    cmd = [
        sys.executable,
        str(REPO_ROOT / "training" / "align.py"),
        *_argv(parity_dir, dataset, out, "--max_steps", "100000"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if "training alta" in line or time.time() > deadline:
            break
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=240)
    log = "".join(lines) + rest
    assert proc.returncode == 130, log[-3000:]  # 128 + SIGINT, as a shell reports an interrupted job
    assert "received SIGINT: stopping after the current step" in log
    assert "interrupted (SIGINT) at step" in log
    saved = list((out / "checkpoints").glob("step-*/trainer_state.json"))
    assert saved


def test_config_file_and_overrides(tmp_path: Path) -> None:
    config = tmp_path / "recipe.yaml"
    config.write_text("preset: alta-tiny\nper_device_train_batch_size: 7\nbase_learning_rate: 1.0e-4\nadapter: full\n")
    model_args, data_args, args = parse_args(["--config", str(config), "--per_device_train_batch_size", "3"])
    assert args.per_device_train_batch_size == 3 and args.base_learning_rate == 1e-4
    assert model_args.adapter == "full" and data_args.mlm_probability == 0.5
    assert args.adam_beta2 == 0.95 and args.weight_decay == 0.05 and args.mask_ratio == 0.75
    config.write_text("preset: alta-tiny\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match=r"Unknown keys in the config file: \['not_a_field'\]"):
        parse_args([str(config)])


def test_schedule_and_sampler() -> None:
    assert learning_rate_at(0, 1.0, 10, 100) == 0.0
    assert learning_rate_at(5, 1.0, 10, 100) == pytest.approx(0.5)
    assert learning_rate_at(10, 1.0, 10, 100) == pytest.approx(1.0)
    assert learning_rate_at(55, 1.0, 10, 100) == pytest.approx(0.5)
    # the reference stops after 30 of 100 epochs, 10 of warm-up: lr = 0.883 x peak
    assert learning_rate_at(30, 1.0, 10, 100) == pytest.approx(0.883, abs=1e-3)
    one = GlobalBatchSampler(10, 4, 1, 0, seed=3)
    ranks = [GlobalBatchSampler(10, 2, 2, r, seed=3) for r in range(2)]
    for epoch in (0, 1):
        one.set_epoch(epoch)
        for r in ranks:
            r.set_epoch(epoch)
        joined = [a + b for a, b in zip(*[list(r) for r in ranks])]
        assert joined == list(one)
    one.set_epoch(1, start_batch=1)
    assert len(list(one)) == 1
    keyed = GlobalBatchSampler(10, 4, 1, 0, seed=3, with_epoch=True)  # what build_dataloader uses
    keyed.set_epoch(1)
    one.set_epoch(1)
    assert list(keyed) == [[(1, i) for i in batch] for batch in one]


def test_length_grouped_sampler_keeps_the_guarantees() -> None:
    lengths = [(i * 37) % 101 + 3 for i in range(103)]  # 103 studies, lengths 3..103
    one = GlobalBatchSampler(103, 8, 1, 0, seed=5, lengths=lengths, group_batches=4)
    ranks = [GlobalBatchSampler(103, 2, 4, r, seed=5, lengths=lengths, group_batches=4) for r in range(4)]
    plain = GlobalBatchSampler(103, 8, 1, 0, seed=5)
    for epoch in (0, 1):
        for sampler in (one, plain, *ranks):
            sampler.set_epoch(epoch)
        batches = list(one)
        # the same global batches on 1 and 4 processes
        assert [sum(parts, []) for parts in zip(*[list(r) for r in ranks])] == batches
        assert len(batches) == len(plain) == 103 // 8 and all(len(b) == 8 for b in batches)
        flat = sum(batches, [])
        assert len(set(flat)) == len(flat)
        # much less padding than random batches: each batch padded to its longest report
        padded = sum(8 * max(lengths[i] for i in b) for b in batches)
        padded_plain = sum(8 * max(lengths[i] for i in b) for b in plain)
        assert padded < 0.8 * padded_plain, (padded, padded_plain)
    one.set_epoch(0)
    epoch0 = list(one)
    one.set_epoch(1)
    assert list(one) != epoch0  # reshuffled every epoch
    # exact resume: starting at batch k gives the rest of the epoch
    one.set_epoch(1, start_batch=5)
    resumed = list(one)
    assert len(resumed) == len(one) == 103 // 8 - 5
    one.set_epoch(1)
    assert resumed == list(one)[5:]
    with pytest.raises(ValueError, match="lengths for 103 studies"):
        GlobalBatchSampler(103, 8, 1, 0, seed=5, lengths=lengths[:-1])


def test_loss_module_equals_model_loss_in_one_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import modeling_alta.modeling_alta as modeling

    # In one process the word-patch similarity matrix is scored once (the texts' rows are its transpose), as in the
    # model's own loss; computing it a second time cost align.py a fifth of its step at the demo size.
    scored = []
    similarity = modeling.alta_local_similarity
    monkeypatch.setattr(modeling, "alta_local_similarity", lambda *a, **k: scored.append(1) or similarity(*a, **k))
    torch.manual_seed(0)
    config = load_preset("alta-tiny", vision_config={"image_size": 32, "reconstruction_image_size": 64})
    config.text_config.hidden_dropout_prob = config.text_config.attention_probs_dropout_prob = 0.0
    model = AltaForPreTraining(config)
    model.freeze_backbone()
    ids = torch.randint(5, 400, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    labels = torch.full_like(ids, -100)
    labels[:, 2:6] = ids[:, 2:6]
    inputs = dict(
        pixel_values=torch.randn(3, 4, 3, 32, 32),
        reconstruction_pixel_values=torch.randn(3, 3, 64, 64),
        input_ids=ids,
        attention_mask=mask,
        mlm_input_ids=torch.where(labels != -100, torch.full_like(ids, 4), ids),
        mlm_labels=labels,
        mask_noise=torch.rand(3, 4, 4),
    )
    reference = model(**inputs, return_loss=True)
    reference.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    assert len(scored) == 1
    losses = AltaPretrainingLoss.from_config(config)(model(**inputs, return_loss=False))
    assert len(scored) == 2
    losses["loss"].backward()
    torch.testing.assert_close(losses["loss"], reference.loss)
    torch.testing.assert_close(losses["total_loss"], reference.loss.detach())
    for name, grad in expected.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_peft_methods_train_through_align(tmp_path: Path, parity_dir: Path, dataset: Path, method: str) -> None:
    from peft import PeftModel

    result = main(_argv(parity_dir, dataset, tmp_path / method, "--max_steps", "2", "--adapter", method))
    folder = Path(result["model_dir"])
    adapter_dir = folder / "peft_adapter"
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["peft_type"] == method.upper()
    assert result["trainable_parameters"] < result["total_parameters"] // 2
    merged = AltaForPreTraining.from_pretrained(folder).eval()  # the merged folder loads as plain ALTA
    torch.manual_seed(0)  # align.py seeds with --seed (0) before building the preset model: rebuild that base
    initial = AltaForPreTraining(load_preset("alta-tiny", **json.loads(SMALL)))
    reloaded = PeftModel.from_pretrained(initial, adapter_dir).eval()
    assert sum(p.numel() for n, p in reloaded.named_parameters() if method in n.lower()) > 0
    pixels, ids = torch.randn(2, 3, 32, 32), torch.randint(5, 400, (2, 12))
    with torch.no_grad():  # the merged folder computes what base + PEFT adapter compute
        peft_alta = reloaded.get_base_model().alta
        for fn in ("get_image_features", "get_text_features"):
            x = pixels if fn == "get_image_features" else ids
            torch.testing.assert_close(
                getattr(merged.alta, fn)(x).pooler_output,
                getattr(peft_alta, fn)(x).pooler_output,
                atol=1e-5,
                rtol=1e-4,
            )
    base = merged
    # "total" counts the frozen base plus the PEFT parameters (adapters and modules_to_save copies)
    assert sum(p.numel() for p in reloaded.parameters()) == result["total_parameters"]
    assert base.num_trainable_parameters()["total"] < result["total_parameters"]


def test_mae_mode_trains_the_backbone_with_adapters_off(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    result = main(_argv(parity_dir, dataset, tmp_path / "mae", "--max_steps", "2", "--adapter", "mae"))
    assert set(result["final_losses"]) == {"step", "reconstruction_loss", "mlm_loss", "total_loss"}
    weights = load_file(str(Path(result["model_dir"]) / "model.safetensors"))
    ups = [v for k, v in weights.items() if k.endswith("up_proj.weight")]
    assert ups and all(torch.count_nonzero(v) == 0 for v in ups)  # adapters untouched: still identity


def test_periodic_zero_shot_validation(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    from processing.datasets import dataset_from_rows, save_study_dataset

    from .synthetic import write_studies

    rows = write_studies(tmp_path / "val_images", n=6, seed=1)
    for i, row in enumerate(rows):
        row["label"] = ["effusion", "cardiomegaly", "edema"][i % 3]
    val = save_study_dataset(dataset_from_rows(rows, extra_columns=("label",)), tmp_path / "val")
    result = main(
        _argv(parity_dir, dataset, tmp_path / "run", "--max_steps", "2", "--eval_steps", "1", "--validation_path",
              str(val), "--validation_split", "train")
    )  # fmt: skip
    assert 0.0 <= result["val_zero_shot_accuracy"] <= 1.0


def test_backbone_mode_trains_everything_but_the_adapters(tmp_path: Path, parity_dir: Path, dataset: Path) -> None:
    result = main(_argv(parity_dir, dataset, tmp_path / "bb", "--max_steps", "2", "--adapter", "backbone"))
    assert {"contrastive_loss", "local_loss", "reconstruction_loss", "mlm_loss"} <= set(result["final_losses"])
    weights = load_file(str(Path(result["model_dir"]) / "model.safetensors"))
    assert all(torch.count_nonzero(v) == 0 for k, v in weights.items() if k.endswith("up_proj.weight"))


def test_text_dropout_changes_the_text_tower_only_and_is_saved(tmp_path: Path, parity_dir: Path) -> None:
    from modeling_alta import AltaConfig
    from training.arguments import AlignArguments, ModelArguments
    from training.build import build_model

    model_args = ModelArguments(
        preset="alta-tiny",
        tokenizer_name_or_path=str(parity_dir / "BiomedVLP-CXR-BERT-specialized"),
        config_overrides=SMALL,
        text_dropout=0.3,
    )
    model, _, _ = build_model(model_args, AlignArguments(output_dir=str(tmp_path)))
    text = model.alta.text_model
    text_dropouts = {m.p for m in text.modules() if isinstance(m, torch.nn.Dropout)}
    text_dropouts |= {m.dropout for m in text.modules() if isinstance(getattr(m, "dropout", None), float)}
    assert text_dropouts == {0.3}
    vision_attention = {
        m.dropout for m in model.alta.vision_model.modules() if isinstance(getattr(m, "dropout", None), float)
    }
    assert vision_attention == {model.config.vision_config.attention_dropout} == {0.0}
    model.save_pretrained(tmp_path / "saved")
    saved = AltaConfig.from_pretrained(tmp_path / "saved")
    assert saved.text_config.hidden_dropout_prob == saved.text_config.attention_probs_dropout_prob == 0.3
    assert saved.vision_config.attention_dropout == 0.0


def test_contrastive_only_run_counts_flops_and_trains_no_unused_head(tmp_path: Path, parity_dir: Path, dataset: Path):
    """CLIP from scratch as the demo runs it: adapters off, the global contrastive loss only, no patch masking; the
    heads of the losses that are off are not in the trainable set, and --count_flops reports the step's FLOPs."""
    from training.arguments import AlignArguments, ModelArguments
    from training.build import build_model

    flags = ["--adapter", "backbone", "--local_loss_weight", "0", "--mlm_loss_weight", "0",
             "--reconstruction_loss_weight", "0", "--mask_ratio", "0"]  # fmt: skip
    result = main(_argv(parity_dir, dataset, tmp_path / "clip", "--max_steps", "2", "--count_flops", "true", *flags))
    assert set(result["final_losses"]) >= {"contrastive_loss"} and "mlm_loss" not in result["final_losses"]
    assert result["flops_per_step"] > 0 and result["train_flops"] == 2 * result["flops_per_step"]
    model, _, counts = build_model(
        ModelArguments(
            preset="alta-tiny",
            tokenizer_name_or_path=str(parity_dir / "BiomedVLP-CXR-BERT-specialized"),
            config_overrides=SMALL,
            adapter="backbone",
        ),
        AlignArguments(
            output_dir=str(tmp_path),
            local_loss_weight=0.0,
            mlm_loss_weight=0.0,
            reconstruction_loss_weight=0.0,
            mask_ratio=0.0,
        ),
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert counts["trainable"] == result["trainable_parameters"]
    assert not any(n.startswith(("decoder.", "mlm_head.", "bert_embed.")) or "local" in n for n in trainable)
    assert "alta.text_model.embeddings.word_embeddings.weight" in trainable  # tied to the MLM output, still trains
    assert "alta.logit_scale" in trainable
    assert all(any(n.startswith(f"alta.{h}.") for n in trainable) for h in ("vision_projection", "text_projection"))
    with pytest.raises(ValueError, match="--mask_ratio 0 removes no patch"):
        AlignArguments(output_dir=str(tmp_path), mask_ratio=0.0)
