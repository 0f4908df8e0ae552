"""Two DDP training steps over NCCL (or gloo on CPU), for ``torchrun --nproc_per_node N``.

``upperson train`` runs without a process group when torchrun starts a single process, so
this check always creates one: the embedded model wrapped in DistributedDataParallel (its
gradient all-reduce), the batch's features gathered with ``all_gather`` as the trainer
gathers them, and a final ``all_reduce``. Writes ``OUT.json`` from rank 0.

    torchrun --standalone --nproc_per_node 1 scripts/ddp_check.py OUT.json
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from upperson.benchmarking import synthetic_batch  # noqa: E402
from upperson.embedded import load_embedded_model  # noqa: E402
from upperson.losses import sdm_loss  # noqa: E402
from upperson.runtime import autocast  # noqa: E402
from upperson.train.distributed import DistInfo, gather_batch  # noqa: E402


class _Always(DistInfo):
    """A DistInfo that gathers even with one process (the trainer skips it at world size 1)."""

    @property
    def enabled(self) -> bool:
        return True


def main(out: str, steps: int = 2, batch: int = 64) -> int:
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend=backend)
    info = _Always(rank, world, local, device)
    torch.manual_seed(rank)
    model = load_embedded_model("upperson").to(device)
    net = DistributedDataParallel(model, device_ids=[local] if cuda else None)
    images, tokens, pids = synthetic_batch(batch, tuple(model.image_size), 20, device, seed=rank)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, eps=1e-3)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        with autocast(device, "bf16" if cuda else "fp32"):
            f, g = net(images, tokens)
        all_pids = gather_batch(pids + rank * batch, info)
        loss = sdm_loss(gather_batch(f.float(), info), gather_batch(g.float(), info), all_pids) * world
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    check = torch.tensor([1.0], device=device)
    dist.all_reduce(check)
    result = {"backend": backend, "world_size": world, "device": str(device), "steps": steps, "batch_per_rank": batch,
              "losses": losses, "grads_finite": grads_finite, "all_reduce_sum": float(check),
              "nccl_version": ".".join(map(str, torch.cuda.nccl.version())) if cuda else None,
              "seconds": round(time.perf_counter() - t0, 2)}
    if rank == 0:
        Path(out).write_text(json.dumps(result, indent=2))
        print(json.dumps(result))
    dist.destroy_process_group()
    ok = grads_finite and all(x == x for x in losses) and float(check) == world
    return 0 if ok else 1


if __name__ == "__main__":
    if len(sys.argv) != 2 or "RANK" not in os.environ:  # started by torchrun, which sets RANK
        print("usage: torchrun --standalone --nproc_per_node N scripts/ddp_check.py OUT.json", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[1]))
