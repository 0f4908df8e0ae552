"""``python -m demo``: the UP-Person search demo (Gradio), on the embedded default unless told otherwise.

Examples::

    python -m demo                                   # embedded model, ToyPEDES test gallery
    python -m demo --gallery ~/photos/people         # your own folder of images
    python -m demo --data-root /data --dataset cuhk-pedes --split test
    python -m demo --checkpoint runs/a/best --checkpoint runs/b/best   # switch between them in the UI
    python -m demo --benchmark                       # query latency, no UI
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Optional, Sequence

from upperson.train.run import Run

log = logging.getLogger("demo")

LIMIT_MAX = 100_000  # the largest value of the --max-* limits (MB or megapixels)


class _Parser(argparse.ArgumentParser):
    """argparse with one ``error: ...`` line (no usage block) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see python -m demo --help)\n")


def port_number(text: str) -> int:
    """A TCP port from 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number; give one from 1 to 65535") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number; give one from 1 to 65535")
    return port


def count_from(low: int, high: Optional[int] = None):
    """An argparse type: a whole number from ``low`` (to ``high``, when given)."""
    span = f"from {low}" + (f" to {high}" if high is not None else " up")

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            n = None
        if n is None or n < low or (high is not None and n > high):
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number {span}")
        return n

    return parse


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be listened on now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return True  # an unknown host is reported by the server itself
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError:
            return False
    return True


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m demo", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("gallery (default: the embedded ToyPEDES test split)")
    src.add_argument("--gallery", type=Path, help="a folder of images (searched recursively)")
    src.add_argument("--data-root", type=Path, help="a data root holding a dataset in a supported format (docs/data.md)")
    src.add_argument("--index", type=Path, metavar="INDEX",
                     help="an index folder made by `python -m upperson index` (its features are used, not re-encoded)")
    src.add_argument("--dataset", default=None,
                     help="with --data-root: cuhk-pedes, icfg-pedes, rstpreid, toypedes or generic (default cuhk-pedes)")
    src.add_argument("--split", default=None, help="with --data-root: the split to search (default test)")
    src.add_argument("--allow-root", type=Path, action="append", default=[],
                     help="a folder under which the UI may index sub-folders (repeatable; --gallery is always allowed)")
    src.add_argument("--studies", type=Path, action="append", default=[], metavar="DIR",
                     help="a study folder (or a folder of them) the Studies views may show: the --out of `python -m "
                          "analysis transfer|budget|binding` (repeatable; default: the shipped assets/ studies)")
    mod = p.add_argument_group("model (default: the embedded UP-Person model)")
    mod.add_argument("--checkpoint", type=Path, action="append", default=[],
                     help="a PETL checkpoint folder (repeatable: the first is loaded, the others of the same "
                          "backbone can be switched to in the UI)")
    mod.add_argument("--pretrained", help="backbone weights for --checkpoint, if not where it was trained")
    srv = p.add_argument_group("server")
    srv.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=port_number, default=None,
                     help="port, 1-65535 (default: Gradio's, 7860 or the next free one)")
    srv.add_argument("--share", action="store_true", help="open a public Gradio share link (off by default)")
    srv.add_argument("--top-k", type=count_from(1, 200),  # 200: demo.app.TOP_K_MAX (not imported: --help stays fast)
                     default=20, help="default number of results (default 20)")
    srv.add_argument("--concurrency", type=count_from(1), default=4, help="requests handled at once (default 4)")
    lim = p.add_argument_group("limits (a file over one is skipped or refused, with the limit named)")
    lim.add_argument("--max-image-mb", type=count_from(1, LIMIT_MAX), default=50, metavar="MB",
                     help="largest gallery image file, in MB (default 50; larger ones are skipped unread)")
    lim.add_argument("--max-image-mp", type=count_from(1, LIMIT_MAX), default=50, metavar="MP",
                     help="largest gallery image, in megapixels, read from its header before decoding (default 50)")
    lim.add_argument("--max-upload-mb", type=count_from(1, LIMIT_MAX), default=20, metavar="MB",
                     help="largest upload, in MB (default 20; Gradio refuses larger ones)")
    p.add_argument("--threads", type=count_from(1), default=1,
                   help="torch CPU threads for a query (default 1: fastest for one short text, and robust on a busy machine)")
    p.add_argument("--index-threads", type=count_from(1), default=None,
                   help="torch CPU threads while embedding gallery images (default: min(4, cores))")
    p.add_argument("--cache-dir", type=Path, default=None,
                   help="embedding cache (default: $UPPERSON_CACHE or ~/.cache/upperson)")
    p.add_argument("--benchmark", action="store_true", help="measure query latency and exit (see demo.benchmark)")
    p.add_argument("--log-level", default="INFO",
                   help="our loggers' level (default INFO; third-party INFO lines are hidden unless DEBUG)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging, third-party INFO lines included")
    return p


def index_limits(args: argparse.Namespace):
    """The :class:`upperson.index.IndexLimits` of the ``--max-image-*`` options."""
    from upperson.index import IndexLimits  # here, not at the top: --help stays fast (no torch import)

    return IndexLimits(max_file_bytes=args.max_image_mb * 2**20, max_pixels=args.max_image_mp * 1_000_000)


def limit_decoders(max_pixels: int) -> None:
    """Make PIL itself refuse images over ``max_pixels`` wherever the app decodes one (uploads included).

    PIL raises DecompressionBombError above twice ``MAX_IMAGE_PIXELS`` (and only warns above
    it); the index and the explanations check the header against the limit first anyway.
    """
    from PIL import Image  # here, not at the top: --help stays fast

    Image.MAX_IMAGE_PIXELS = (max_pixels + 1) // 2


def load_model(checkpoints: Sequence[Path], pretrained: Optional[str]):
    """(model, default checkpoint name, {other name: path}) for the CLI's model options
    (already checked by :func:`option_problem`)."""
    from upperson.sources import SourceSpec, load_source  # (imports torch: not for --help)

    if not checkpoints:
        return load_source(SourceSpec()).model, "embedded", {}
    names: dict[str, Path] = {}
    for c in checkpoints:
        label = Run.label_of(c)  # a run's own name (runs/a/best -> a), not "best" for every run
        name = label if label not in names else str(c)
        names[name] = c
    first, *rest = names.items()
    return load_source(SourceSpec(checkpoint=first[1], pretrained=pretrained)).model, first[0], dict(rest)


def default_vocabulary(checkpoints: Sequence[Path]):
    """The training vocabulary of the checkpoint the demo starts on (the embedded one without --checkpoint)."""
    from demo.search import stored_vocabulary  # here, not at the top: --help stays fast
    from upperson.embedded import EMBEDDED_DIR, embedded_available

    if checkpoints:
        return stored_vocabulary(checkpoints[0])
    return stored_vocabulary(EMBEDDED_DIR / "upperson") if embedded_available() else None


def feature_problem(feats) -> Optional[str]:
    """What makes ``feats`` (N x D, float32; finite: the index store checks that) not an image
    tower's output, or None: every row is L2-normalised, as the model's features are."""
    norms = feats.norm(dim=1)
    off = ((norms - 1).abs() > 1e-3).nonzero().flatten()
    if len(off):
        return f"{len(off)} row(s) not of unit length, the first row {int(off[0])} (length {float(norms[off[0]]):.4g})"
    return None


def seed_cache_from_index(index: Path, model, cache: Path) -> int:
    """Put an index folder's features into the demo's feature cache, so its images are not encoded
    again (returns how many were new); refused (ValueError) when another model made the index, or
    its features are not a model's."""
    import numpy as np  # imported here, as everything heavy in this module, so that --help stays fast
    import torch

    from demo.search import FEATURE_CACHE
    from upperson.index import ImageIndex, model_key
    from upperson.search.store import IndexStore

    store = IndexStore.open(index)
    key = model_key(model)
    if store.manifest.model.get("key") != key:
        raise ValueError(f"--index {index} was built by another model ({store.manifest.model.get('source')}); "
                         "start the demo with that --checkpoint, or index again with this model")
    entries = store.manifest.entries
    feats = torch.from_numpy(np.asarray(store.features_of(list(range(len(entries)))), dtype=np.float32))
    problem = feature_problem(feats)
    if problem:
        raise ValueError(f"--index {index}: not a model's features ({problem}); build the index again")
    added = ImageIndex(model, cache / FEATURE_CACHE, progress=False, key=key).add_known([e.sha1 for e in entries], feats)
    log.info("--index %s: %d image(s), %d feature(s) added to the cache", index, len(entries), added)
    return added


def seed_cache_for_embedded_gallery(model, cache: Path, index: Optional[Path] = None) -> int:
    """Put the shipped features of the default gallery (``assets/embedded/gallery-index``, made by
    ``scripts/embedded_gallery_index.sh``) into the feature cache, so that a first start does not
    encode its images; returns how many were added. Another model (``--checkpoint``), a missing or a
    damaged index: nothing is added, the gallery is encoded as without it (said in the log)."""
    from upperson.assets import EMBEDDED_GALLERY_INDEX  # (numpy, torch: as everything heavy here, not for --help)
    from upperson.index import model_key
    from upperson.search.store import IndexStore

    index = EMBEDDED_GALLERY_INDEX if index is None else Path(index)
    if not (index / "manifest.json").is_file():
        return 0
    try:
        if IndexStore.open(index, verify=False).manifest.model.get("key") != model_key(model):
            log.info("the shipped features of the default gallery are the embedded model's, not this one's: "
                     "its images are encoded")
            return 0
        return seed_cache_from_index(index, model, cache)
    except ValueError as exc:  # IndexFolderError included: corrupted, truncated, tampered
        log.warning("the shipped features of the default gallery are not used (its images are encoded): %s", exc)
        return 0


def option_problem(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with options that the others make meaningless or that name no folder, if
    anything: checked before the heavy imports, so such a mistake is one line at once."""
    missing = [str(r) for r in args.studies if not r.is_dir()]
    if missing:
        return (f"--studies: not a folder: {', '.join(missing)}; give the --out folder of "
                "`python -m analysis transfer|budget|binding`")
    missing = [str(r) for r in args.allow_root if not r.is_dir()]
    if missing:
        return f"--allow-root: not a folder: {', '.join(missing)}"
    if sum(x is not None for x in (args.gallery, args.data_root, args.index)) > 1:
        return "give one of --gallery, --data-root and --index"
    if not args.data_root and (args.dataset or args.split):
        return "--dataset and --split apply to --data-root; give it too"
    if not args.checkpoint and args.pretrained:
        return "--pretrained applies to --checkpoint; give it too"
    return None


def load_gallery(args: argparse.Namespace):
    """The gallery the options name (already checked by :func:`option_problem`)."""
    from demo.gallery import dataset_gallery, embedded_gallery, folder_gallery, index_gallery

    if args.index:
        return index_gallery(args.index, allow_roots=args.allow_root)
    if args.gallery:
        return folder_gallery(args.gallery)
    if args.data_root:
        return dataset_gallery(args.dataset or "cuhk-pedes", args.data_root, args.split or "test",
                               allow_roots=args.allow_root)
    return embedded_gallery()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from upperson.logs import setup_logging

    try:
        setup_logging("DEBUG" if args.verbose else args.log_level, ("demo", "upperson"))
    except ValueError as exc:
        print(f"error: --log-level: {exc}", file=sys.stderr)
        return 2
    problem = option_problem(args)
    if problem:
        return _fail(problem)
    index_threads = args.index_threads or max(1, min(4, os.cpu_count() or 1))
    if args.benchmark:
        from demo.benchmark import main as bench

        return bench(["--threads", str(args.threads)])

    if args.port is not None and not port_free(args.host, args.port):
        return _fail(f"port {args.port} on {args.host} is in use; choose another with --port, "
                     "or leave it out to take a free one")
    from demo.app import build_app, launch
    from demo.gallery import GalleryError, folder_gallery
    from demo.search import SearchEngine
    from upperson.embedded import cache_dir

    try:
        gallery = load_gallery(args)
        model, default_name, others = load_model(args.checkpoint, args.pretrained)
        if args.index:
            seed_cache_from_index(args.index, model, args.cache_dir or cache_dir())
        elif not (args.gallery or args.data_root):
            seed_cache_for_embedded_gallery(model, args.cache_dir or cache_dir())
        limits = index_limits(args)
        limit_decoders(limits.max_pixels)
        relist = (lambda: folder_gallery(args.gallery)) if args.gallery else None
        engine = SearchEngine(model, gallery, cache_dir=args.cache_dir or cache_dir(),
                              checkpoints=others, default_name=default_name,
                              vocabularies={default_name: default_vocabulary(args.checkpoint)},
                              query_threads=args.threads, index_threads=index_threads, limits=limits, relist=relist)
    except (GalleryError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    allow = list(args.allow_root) + ([args.gallery] if args.gallery else [])
    app = build_app(engine, allow_roots=allow, default_top_k=args.top_k, studies=args.studies)
    try:
        _, local_url, share_url = launch(app, host=args.host, port=args.port, share=args.share,
                                         prevent_thread_lock=True, concurrency=args.concurrency, quiet=True,
                                         max_file_size=args.max_upload_mb * 2**20)
    except OSError as exc:  # the port was taken meanwhile, or the host cannot be listened on
        return _fail(f"cannot listen on {args.host}:{args.port or 'a free port'}: {exc}")
    # SIGTERM (docker stop, systemd, kill) ends the demo as Ctrl+C does: the server closes and the
    # exit handlers run (they remove the temp folder of generated images). Installed before the
    # "running at" line, so a caller that stops the demo on that line never kills it outright.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"UP-Person demo running at {local_url}" + (f" (public: {share_url})" if share_url else ""), flush=True)
    try:
        while not stop.wait(0.2) and app.is_running:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
