"""``python -m upperson export-onnx``: the merged image and text towers as ONNX graphs."""

from __future__ import annotations

import argparse
import json
import logging
import math
from pathlib import Path

log = logging.getLogger("upperson.export_onnx")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-onnx", help="export a checkpoint's merged towers to ONNX (checked with onnxruntime)",
        description="Export the merged image and text towers of a PETL checkpoint (or `embedded`, the shipped "
                    "model) to DIR/image.onnx and DIR/text.onnx with a dynamic batch, plus DIR/onnx.json (inputs, "
                    "preprocessing, tokenizer settings, checksums). onnxruntime must reproduce torch's features "
                    "within --tolerance, or nothing is written. Training and the unmerged model are not exported.")
    p.add_argument("checkpoint", metavar="CHECKPOINT",
                   help="a PETL checkpoint folder (petl.safetensors + petl.json; a run's is RUN/best), or `embedded`")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder to write (must not exist)")
    p.add_argument("--pretrained", help="backbone weights for the checkpoint (default: the path it recorded)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest absolute feature difference to torch accepted (default 1e-4)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--benchmark", action="store_true",
                   help="after the export, time torch against onnxruntime on this CPU (batch 1 and 32)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # imported here, not at the top: `python -m upperson --help` imports every command's module
    from upperson.io import check_writable_file

    # the cheap checks first: the heavy imports (torch.onnx, onnxruntime) take seconds
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise ValueError(f"--tolerance {args.tolerance}: give a positive number (e.g. 1e-4)")
    if args.opset is not None and not 17 <= args.opset <= 23:
        raise ValueError(f"--opset {args.opset}: give an opset from 17 to 23 (or leave it out)")
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(f"--out {args.out} exists; choose another folder or pass --overwrite")
    check_writable_file(args.out / "onnx.json", "--out folder")

    from upperson.data import build_tokenizer
    from upperson.embedded import EMBEDDED_DIR, load_embedded_model
    from upperson.model.checkpoint import load_model, read_checkpoint_config
    from upperson.onnx_export import export_onnx, onnx_latency

    if args.checkpoint == "embedded":
        if args.pretrained:
            raise ValueError("--pretrained: the embedded model uses its shipped backbone; leave --pretrained out")
        model = load_embedded_model("upperson")
        meta = read_checkpoint_config(EMBEDDED_DIR / "upperson")
    else:
        model = load_model(args.checkpoint, pretrained=args.pretrained)
        meta = read_checkpoint_config(args.checkpoint)
    model = model.eval()
    source = {"checkpoint": args.checkpoint, "weights_sha256": meta.get("sha256"), "model": model.config.name,
              "image_size": list(model.image_size)}
    tokenizer = build_tokenizer(model.config.name)
    result = export_onnx(model, tokenizer, args.out, source=source, tolerance=args.tolerance, opset=args.opset,
                         overwrite=args.overwrite)
    summary = {"out": str(result.folder), "image_max_abs_diff": result.image_max_abs_diff,
               "text_max_abs_diff": result.text_max_abs_diff, "seconds": round(result.seconds, 1)}
    if args.benchmark:
        summary["latency"] = onnx_latency(model, tokenizer, result.folder)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"wrote {result.folder}/{{image.onnx,text.onnx,onnx.json}} in {result.seconds:.1f} s; onnxruntime matches "
          f"torch within {result.image_max_abs_diff:.2g} (image) and {result.text_max_abs_diff:.2g} (text)")
    for row in summary.get("latency", []):
        print(f"{row['tower']:>5} batch {row['batch']:>3}: torch {row['torch_p50_ms']:.1f} ms p50 "
              f"({row['torch_p95_ms']:.1f} p95), onnxruntime {row['onnxruntime_p50_ms']:.1f} ms p50 "
              f"({row['onnxruntime_p95_ms']:.1f} p95)")
    return 0
