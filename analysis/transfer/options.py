"""``python -m analysis transfer``'s options (argparse only: ``--help`` imports nothing heavy)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_RUNS_DIR = Path("runs") / "transfer"


def add_transfer_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("transfer (docs/transfer.md)")
    g.add_argument("--source", "--dataset", dest="sources", action="append", default=[], metavar="NAME",
                   help="a source domain, trained on and selected on its val split (repeatable): a ToyPEDES domain "
                        "(cuhk, icfg, rstp) or a dataset (cuhk-pedes, icfg-pedes, rstpreid)")
    g.add_argument("--target", dest="targets", action="append", default=[], metavar="NAME",
                   help="a target domain, evaluated on its test split from every source (repeatable)")
    g.add_argument("--data-root", dest="data_roots", action="append", default=[], metavar="NAME=DIR",
                   help="the data root of each source and target (repeatable), e.g. --data-root cuhk=data/cuhk")
    g.add_argument("--runs-dir", default=None,
                   help=f"the sweep folder: RUNS/<method>/<source>/seed-<s>/ (default {DEFAULT_RUNS_DIR})")
    g.add_argument("--runs", dest="given_runs", action="append", default=[], metavar="METHOD:SOURCE=RUN_DIR",
                   help="use this complete run instead of training (repeatable; one per seed); with --runs nothing "
                        "trains. METHOD: upperson, full-finetune, zero-shot")
    g.add_argument("--config", default="toypedes", help="UP-Person's preset or YAML (default toypedes); zero-shot "
                   "is the same with every component off and no training")
    g.add_argument("--full-finetune-config", default="toypedes-full-finetune",
                   help="the full fine-tune's preset or YAML (default toypedes-full-finetune)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field of every method (repeatable), e.g. model.pretrained=PATH")
    g.add_argument("--epochs", type=int, help="training epochs of the trained methods (default: the presets')")
    g.add_argument("--seeds", type=int, default=1, help="training seeds per trained method (default 1): train.seed "
                   "= the config's, +1, ...")
    g.add_argument("--methods", default=None, help="comma-separated subset of upperson,full-finetune,zero-shot")
    g.add_argument("--val-from-train", type=int, default=None, metavar="N",
                   help="for a source without a val split (ICFG-PEDES): hold out N whole train identities as its "
                        "val, to select on (data.val_from_train; seed: --set data.val_from_train_seed=S). "
                        "Sources with a val split keep theirs")
    g.add_argument("--dry-run", action="store_true", help="print the planned runs and their estimated cost; "
                   "train, evaluate and write nothing")
    g.add_argument("--force", action="store_true", help="train again even where a complete run exists")
    g.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples of the intervals (default 2000)")
    g.add_argument("--ci-seed", type=int, default=0, help="seed of the bootstrap resampling (default 0)")
