"""``python -m upperson doctor``: what this machine runs, checked on the embedded model in seconds.

Reports the torch/CUDA versions and the device with its memory; the scaled-dot-product
attention backends (which exist, which succeed on each tower, and the kernel that really
runs: image tower without a mask, text tower with the causal mask plus the prefix); how
close bf16 features are to fp32; and 10 training steps on the embedded model (the loss must
go down) with samples/s and peak memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this machine: versions, attention kernels, precision, a short training",
                       description="check this machine: versions, device memory, attention kernels, bf16 agreement, a short training")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda when available)")
    p.add_argument("--steps", type=int, default=10, help="training steps on the embedded model, >= 2 (default: 10)")
    p.add_argument("--batch", type=int, default=None, help="training batch, >= 2 (default: 128 on GPU, 16 on CPU)")
    p.add_argument("--json", dest="json_out", help="also write the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.steps < 2:
        raise ValueError(f"--steps must be >= 2 (got {args.steps})")
    if args.batch is not None and args.batch < 2:
        raise ValueError(f"--batch must be >= 2 (got {args.batch}): the loss needs two samples")
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.cli.benchmark import check_json_path

    if args.json_out:
        check_json_path(args.json_out)

    from upperson.doctor import machine_report, report_lines
    from upperson.io import atomic_write_json
    from upperson.runtime import resolve_device

    report = machine_report(resolve_device(args.device), args.steps, args.batch)
    print("\n".join(report_lines(report)))
    if args.json_out:
        atomic_write_json(Path(args.json_out), report)
    if not report["training"]["loss_decreased"]:
        raise RuntimeError("the training check failed: the loss did not go down in "
                           f"{args.steps} steps on one fixed batch; see the numbers above")
    return 0
