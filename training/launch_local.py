"""Start N training processes on this machine with every socket on the loopback interface.

    python -m training.launch_local --num_processes 2 training/align.py --config FILE --cpu

`accelerate launch` and `torchrun` host the rendezvous store (a torch `TCPStore`) in the launcher, and the store
listens on every interface for the whole run whatever `--main_process_ip` says (torch binds it to the wildcard
address; checked with torch 2.13). For a run confined to one machine that is a port open to the network for no
reason. This launcher binds the store's socket to 127.0.0.1 itself and hands it to torch (`master_listen_fd`), sets
`GLOO_SOCKET_IFNAME` (and `NCCL_SOCKET_IFNAME`) to the loopback interface so the processes' own connections stay on
it, and then runs torch's elastic launcher (what `accelerate launch --multi_gpu` runs) with a static rendezvous on
that address. The processes see the usual environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`...);
`training/align.py` builds its `Accelerator` from it (`--cpu` for CPU processes, as with `accelerate launch`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import socket
import sys
from collections.abc import Sequence


LOOPBACK = "127.0.0.1"


def loopback_interface() -> str:
    """The name of the interface that holds 127.0.0.1 (`lo` on Linux, `lo0` on macOS)."""
    try:
        import psutil

        for name, addresses in psutil.net_if_addrs().items():
            if any(a.family == socket.AF_INET and a.address == LOOPBACK for a in addresses):
                return name
    except Exception:  # psutil missing or restricted: fall back to the usual names
        pass
    return "lo0" if sys.platform == "darwin" else "lo"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.launch_local",
        description=__doc__.split("\n\n")[0],
        epilog="Everything after the script path is passed to the script.",
    )
    parser.add_argument("--num_processes", "--nproc_per_node", type=int, default=2, help="processes to start")
    parser.add_argument("--port", type=int, default=0, help="rendezvous port on 127.0.0.1 (0: a free one)")
    parser.add_argument("script", help="the training script, e.g. training/align.py")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="its arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the launcher's own arguments, host the store on 127.0.0.1 and run torch's launcher in this process."""
    import torch.distributed as dist
    from torch.distributed.run import main as torch_run

    args = _parser().parse_args(argv)
    if args.num_processes < 1:
        raise SystemExit(f"--num_processes must be >= 1; got {args.num_processes}")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((LOOPBACK, args.port))
    listener.listen(128)
    port = listener.getsockname()[1]
    # multi_tenant: torch's static rendezvous creates a TCPStore server for the same port in this process; it then
    # reuses this one (bound to loopback) instead of binding a new socket to every interface.
    store = dist.TCPStore(
        LOOPBACK,
        port,
        None,
        True,
        datetime.timedelta(seconds=900),
        wait_for_workers=False,
        multi_tenant=True,
        master_listen_fd=listener.fileno(),
    )
    interface = loopback_interface()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", interface)
    os.environ.setdefault("NCCL_SOCKET_IFNAME", interface)
    try:
        torch_run(
            [
                "--nnodes", "1",
                "--nproc_per_node", str(args.num_processes),
                "--rdzv_backend", "static",
                "--master_addr", LOOPBACK,
                "--master_port", str(port),
                args.script,
                *args.script_args,
            ]
        )  # fmt: skip
    finally:
        del store
        listener.close()


if __name__ == "__main__":
    main()
