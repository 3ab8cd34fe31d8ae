"""The fake Hub itself, with a stock transformers BertModel: push -> inspect what arrived -> load back equal."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load as load_safetensors

from tests.hub.fake_hub import FakeHub, run_python


BERT = """
import torch
from transformers import BertConfig, BertModel
torch.manual_seed(0)
config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
model = BertModel(config)
"""


@pytest.fixture
def hub(tmp_path):
    with FakeHub(tmp_path / "hub") as server:
        yield server


def test_push_to_hub_uploads_and_loads_back(hub, tmp_path):
    out = run_python(
        BERT
        + """
url = model.push_to_hub("fake-user/bert-tiny", commit_message="tiny bert")
print(url)
again = BertModel.from_pretrained("fake-user/bert-tiny")
sd, sd2 = model.state_dict(), again.state_dict()
print("EQUAL", sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd))
""",
        env=hub.env(),
        cwd=tmp_path,
    )
    assert "EQUAL True" in out, out
    assert hub.url in out and "/fake-user/bert-tiny/commit/" in out

    files = hub.files("fake-user/bert-tiny")
    assert set(files) == {".gitattributes", "README.md", "config.json", "model.safetensors"}
    assert json.loads(files["config.json"])["model_type"] == "bert"
    tensors = load_safetensors(files["model.safetensors"])
    assert tensors["embeddings.word_embeddings.weight"].shape == (50, 16)
    assert hub.commits("fake-user/bert-tiny") == ["initial commit", "tiny bert"]
    assert (hub.repo_dir("fake-user/bert-tiny") / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert hub.unhandled == []


def test_upload_folder_snapshot_download_and_missing_entries(hub, tmp_path):
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.bin").write_bytes(bytes(range(256)))
    out = run_python(
        f"""
from pathlib import Path
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError
api = HfApi()
api.create_repo("org/data", exist_ok=True)
api.create_repo("org/data", exist_ok=True)  # second call: 409, accepted
api.upload_folder(folder_path={str(folder)!r}, repo_id="org/data", commit_message="files")
local = Path(snapshot_download("org/data"))
print("SNAP", sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()))
print("B", Path(hf_hub_download("org/data", "sub/b.bin")).read_bytes() == bytes(range(256)))
try:
    hf_hub_download("org/data", "nope.txt")
except EntryNotFoundError:
    print("MISSING-ENTRY ok")
try:
    hf_hub_download("org/absent", "a.txt")
except RepositoryNotFoundError:
    print("MISSING-REPO ok")
""",
        env=hub.env(),
        cwd=tmp_path,
    )
    assert "SNAP ['.gitattributes', 'a.txt', 'sub/b.bin']" in out, out
    assert "B True" in out and "MISSING-ENTRY ok" in out and "MISSING-REPO ok" in out
    assert hub.files("org/data")["a.txt"] == b"alpha"
    assert hub.unhandled == []
