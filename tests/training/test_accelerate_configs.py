"""The shipped accelerate configs parse, pass `accelerate launch` validation, and the CPU one really gives 2 ranks."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configuration" / "accelerate"

EXPECTED = {
    "single_gpu.yaml": (DistributedType.NO, 1, 1),
    "multi_gpu.yaml": (DistributedType.MULTI_GPU, 4, 1),
    "multi_node.yaml": (DistributedType.MULTI_GPU, 8, 2),
    "fsdp.yaml": (DistributedType.FSDP, 4, 1),
    "deepspeed_zero2.yaml": (DistributedType.DEEPSPEED, 4, 1),
    "cpu_2proc.yaml": (DistributedType.MULTI_GPU, 2, 1),
}


def test_every_shipped_config_is_listed():
    assert sorted(p.name for p in CONFIG_DIR.glob("*.yaml")) == sorted(EXPECTED)
    readme = (CONFIG_DIR / "README.md").read_text()
    for name in EXPECTED:
        assert name in readme, f"{name} is not documented in configuration/accelerate/README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses(name: str):
    config = load_config_from_file(str(CONFIG_DIR / name))
    distributed_type, num_processes, num_machines = EXPECTED[name]
    assert config.distributed_type == distributed_type
    assert config.num_processes == num_processes
    assert config.num_machines == num_machines
    if name == "fsdp.yaml":
        assert config.fsdp_config["fsdp_version"] == 2
        assert "AltaVisionLayer" in config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"]
    if name == "deepspeed_zero2.yaml":
        assert config.deepspeed_config["zero_stage"] == 2


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_passes_launch_validation(name: str):
    # `_validate_launch_command` is private; it is what `accelerate launch` runs on the merged arguments, so it
    # catches values the dataclass accepts but the launcher refuses. Skip rather than fail if it moves.
    launch = pytest.importorskip("accelerate.commands.launch")
    if not hasattr(launch, "_validate_launch_command"):
        pytest.skip("accelerate.commands.launch._validate_launch_command is gone in this accelerate version")
    args = launch.launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / name), "script.py"])
    args, _, _ = launch._validate_launch_command(args)
    distributed_type, num_processes, num_machines = EXPECTED[name]
    assert args.num_processes == num_processes
    assert bool(args.multi_gpu) == (distributed_type == DistributedType.MULTI_GPU)
    assert bool(args.use_fsdp) == (distributed_type == DistributedType.FSDP)
    assert bool(args.use_deepspeed) == (distributed_type == DistributedType.DEEPSPEED)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SCRIPT = """
from accelerate import Accelerator
accelerator = Accelerator()
print(f"rank={accelerator.process_index} n={accelerator.num_processes} type={accelerator.distributed_type.value}", flush=True)
"""


def test_cpu_config_launches_two_ranks(tmp_path: Path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIG_DIR / "cpu_2proc.yaml"),
        "--main_process_port",
        str(_free_port()),
        str(script),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # The two processes share stdout, so their lines can interleave: match the records, not the lines.
    lines = sorted(re.findall(r"rank=\d n=\d type=[A-Z_]+", proc.stdout))
    assert lines == ["rank=0 n=2 type=MULTI_CPU", "rank=1 n=2 type=MULTI_CPU"], proc.stdout + proc.stderr
