"""``python -m analysis binding``: the options and the command body.

Only argparse at import: the model, the generator and matplotlib are imported when the command runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("analysis")

DEFAULT_PAIRS = 500
MAX_PAIRS = 100_000


def binding_args(p: argparse.ArgumentParser) -> None:
    """The ``binding`` command's options."""
    g = p.add_argument_group("models (default: the embedded UP-Person and its zero-shot backbone)")
    g.add_argument("--checkpoint", help="PETL checkpoint folder (petl.safetensors + petl.json)")
    g.add_argument("--run", dest="run_dir", metavar="RUN_DIR", help="training run folder (uses its best/ checkpoint)")
    g.add_argument("--pretrained", help="backbone weights to use instead of the path the checkpoint recorded")
    g.add_argument("--compare", action="append", default=[], metavar="PATH",
                   help="another model in the same table: a checkpoint folder or a run folder, e.g. the full "
                        "fine-tune's run (repeatable)")
    g.add_argument("--no-zero-shot", action="store_true", help="leave out the zero-shot backbone")
    g = p.add_argument_group("probe")
    g.add_argument("--pairs", type=int, default=DEFAULT_PAIRS,
                   help=f"minimal pairs per probe (default {DEFAULT_PAIRS}, at most {MAX_PAIRS})")
    g.add_argument("--seed", type=int, default=0, help="seed of the pairs (default 0)")
    g.add_argument("--domain", choices=("cuhk", "icfg", "rstp"),
                   help="draw the pairs as this ToyPEDES domain's benchmark does (its clothes, camera, views and "
                        "caption style; docs/generalization.md); default: the original ToyPEDES. Give --data-root "
                        "that domain's data (or --no-attributes)")
    g.add_argument("--captions", default="fine", choices=("fine", "template"),
                   help="the pairs' queries: the generator's fine captions or a fixed template (default fine; the "
                        "text-side twins always use the template)")
    g.add_argument("--data-root", help="a ToyPEDES data root for the per-attribute accuracy (its test split and "
                   "attributes.json; default: the embedded ToyPEDES)")
    g.add_argument("--no-attributes", action="store_true", help="skip the per-attribute accuracy")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals (default 2000)")
    g.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
    g.add_argument("--json", action="store_true", help="print the results as JSON on stdout (instead of the "
                   "figure paths)")


def check_binding_args(args) -> None:
    """The options ``analysis.checks.validate_args`` does not know, before any model or data is read."""
    if not 1 <= args.pairs <= MAX_PAIRS:
        raise ValueError(f"--pairs must be from 1 to {MAX_PAIRS}, got {args.pairs}")
    for p in args.compare:
        if not Path(p).expanduser().is_dir():
            raise ValueError(f"--compare {p}: no such folder; give a checkpoint folder or a run folder")
    if getattr(args, "domain", None) and not args.no_attributes and not args.data_root:
        raise ValueError(f"--domain {args.domain}: the per-attribute part needs that domain's test split; pass "
                         f"--data-root (a ToyPEDES made with --domain {args.domain}) or --no-attributes")


def check_data_domain(root: Path, domain) -> None:
    """Refuse a data root of another domain than the pairs' (its ``meta.json`` says which)."""
    meta = Path(root) / "meta.json"
    found = json.loads(meta.read_text()).get("domain") if meta.is_file() else None
    if found == domain:
        return
    what = f"domain {found}" if found else "the original ToyPEDES"
    fix = (f"pass --domain {found} or a data root of the original ToyPEDES" if domain is None and found else
           f"pass the data root of domain {domain} (made with --domain {domain}) or --no-attributes")
    raise ValueError(f"--data-root {root}: its ToyPEDES is {what}, but the pairs are drawn as "
                     f"{'domain ' + domain if domain else 'the original ToyPEDES'}: {fix}")


def _label(source, zero_shot: bool = False) -> str:
    from upperson.train.run import Run  # (heavy: only when the command runs)

    if zero_shot:
        return "zero-shot backbone"
    model = source.model
    kind = "UP-Person" if model.config.freeze_backbone else "full fine-tune"
    return kind if source.checkpoint is None else f"{kind} ({Run.label_of(source.checkpoint)})"


def load_models(args) -> list[tuple[str, object]]:
    """(label, model) of every model to compare: zero-shot first, then the model, then --compare's."""
    from upperson.sources import SourceSpec, load_source, zero_shot_of  # (heavy: only when the command runs)

    main = load_source(SourceSpec(checkpoint=args.checkpoint, run=args.run_dir, pretrained=args.pretrained))
    models = [] if args.no_zero_shot else [(_label(main, True), zero_shot_of(main.model))]
    models.append((_label(main), main.model))
    for p in args.compare:
        path = Path(p).expanduser()
        spec = SourceSpec(checkpoint=path) if (path / "petl.json").is_file() else SourceSpec(run=path)
        src = load_source(spec)
        models.append((_label(src), src.model))
    seen: dict[str, int] = {}
    out = []
    for label, model in models:  # two models of the same name: numbered
        seen[label] = seen.get(label, 0) + 1
        out.append((label if seen[label] == 1 else f"{label} #{seen[label]}", model))
    return out


def cmd_binding(args, command: str = ""):
    """Draw the pairs, score every model, write the tables, the README and the figure."""
    # (heavy: only when the command runs)
    from analysis.binding.attributes import attribute_accuracy, attributes_file, read_attributes
    from analysis.binding.encoder import ModelEncoder
    from analysis.binding.output import ProbeResult, binding_figure, write_readme, write_tables
    from analysis.binding.pairs import PROBES, draw_pairs, probes_for
    from analysis.binding.scoring import accuracy, difference, score_pairs
    from analysis.sources import load_data

    check_binding_args(args)
    records, attrs, data_note = [], {}, "skipped (--no-attributes)"
    if not args.no_attributes:
        data = load_data(args.data_root, "toypedes")
        check_data_domain(data.root, args.domain)
        records = data.split("test")
        attrs = read_attributes(attributes_file(data.root), [r.pid for r in records])
        data_note = (f"{data.root}, test split: {len({r.pid for r in records})} identities, {len(records)} images, "
                     f"{sum(len(r.captions) for r in records)} queries")
    models = load_models(args)
    probes = probes_for(args.domain)
    left_out = [p for p in PROBES if p not in probes]
    if left_out:  # said out loud, and in the README
        log.warning("domain %s never draws: %s; that probe is left out", args.domain, ", ".join(left_out))
    log.info("drawing %d pairs per probe (%s captions, seed %d, %s)", args.pairs, args.captions, args.seed,
             f"domain {args.domain}" if args.domain else "the original ToyPEDES")
    pairs = {probe: draw_pairs(probe, args.pairs, args.seed, args.captions, args.domain) for probe in probes}
    skipped = {probe: sum(p.skipped for p in ps) for probe, ps in pairs.items()}
    if any(skipped.values()):
        log.warning("skipped identities whose probed attribute did not show (both images the same): %s",
                    ", ".join(f"{probe} {n}" for probe, n in skipped.items() if n))
    ci = dict(resamples=args.resamples, seed=args.ci_seed)
    results, per_attribute, first = [], {}, {}
    for label, model in models:
        encoder = ModelEncoder(model)
        for probe, ps in pairs.items():
            for side, scores in score_pairs(ps, encoder).items():
                base = first.setdefault((probe, side), (label, scores))  # the first model: the reference
                diff = difference(scores, base[1], **ci) if base[0] != label else None
                results.append(ProbeResult(label, probe, side, accuracy(scores, **ci), scores,
                                           base[0] if diff else "", diff))
        if records:
            per_attribute[label] = attribute_accuracy(records, attrs, encoder, **ci)
        log.info("%s: %s", label, ", ".join(f"{r.name} {r.accuracy.value:.1f}" for r in results if r.model == label))
    out = Path(args.out)
    write_tables(out, results, per_attribute, captions=args.captions, seed=args.seed)
    fig = binding_figure(results, per_attribute, out)
    details = {"models": ", ".join(label for label, _ in models),
               "pairs": f"{args.pairs} per probe, seed {args.seed}, drawn with the ToyPEDES generator "
                        f"({'domain ' + args.domain if args.domain else 'the original ToyPEDES'}; queries: "
                        f"{args.captions} captions; text-side twins: the template)"
                        + (f"; left out: {', '.join(left_out)} (the domain never draws one)" if left_out else ""),
               "skipped": "identities whose two images came out the same (the attribute did not show), redrawn: "
                          + ", ".join(f"{probe} {n}" for probe, n in skipped.items()),
               "per-attribute data": data_note,
               "intervals": f"95 % percentile bootstrap over pairs (queries), {args.resamples} resamples, "
                            f"seed {args.ci_seed}; differences: paired bootstrap on the same pairs "
                            f"(rebuild from binding_per_pair.csv)"}
    write_readme(out, results, per_attribute, command=command or "python -m analysis binding", details=details,
                 figure=fig)
    if args.json:
        payload = {"pairs": [{"model": r.model, "probe": r.probe, "side": r.side, **vars(r.accuracy),
                              **({"versus": r.versus, "diff": vars(r.diff)} if r.diff else {})} for r in results],
                   "attributes": {m: {f: vars(a) for f, a in per.items()} for m, per in per_attribute.items()},
                   "details": details}
        sys.stdout.write(json.dumps(payload, indent=1) + "\n")
        return []
    return [fig]
