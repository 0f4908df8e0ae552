"""Training and model selection (docs/method.md): one entry point, :func:`train`.

A run folder holds ``config.yaml`` (the resolved config), ``train.log``, ``metrics.jsonl``
(one JSON object per epoch, for pandas), ``last/`` (resumable state), ``best/`` (the
selected PETL checkpoint) and ``results.json`` (the selection and the test metrics).
``last/state.json`` holds the metrics rows too: ``metrics.jsonl`` is rewritten from it after
each epoch, and a resume repairs it or refuses records that disagree (:mod:`upperson.train.records`).
A full disk is one :class:`~upperson.io.DiskFullError` naming the folder and the space needed.

The folder comes into being only once training really starts (config, data, model and, on
resume, the saved state all checked): until then log lines are held in memory, and a failed
start removes the lock and the folders it created (see :mod:`upperson.train.rundir`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from logging.handlers import MemoryHandler
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from upperson.config import ExperimentConfig, save_config, to_dict
from upperson.data import PedesDataset, TrainCaptionDataset, build_tokenizer, build_transforms, load_dataset
from upperson.data.holdout import OPTION as VAL_OPTION
from upperson.data.holdout import held_out_record, hold_out_val
from upperson.evaluation import evaluate
from upperson.io import (atomic_write_json, atomic_write_text, disk_full_reported, file_digest, is_disk_full,
                         recover_dir, replace_dir)
from upperson.losses import build_loss
from upperson.metrics import format_metrics
from upperson.model import UPPerson, build_model
from upperson.model.checkpoint import load_petl, save_petl
from upperson.model.params import count_parameters
from upperson.runtime import (autocast, grad_scaler, half_dtype, mixed_precision, return_freed_memory_to_os,
                              seed_everything)
from upperson.train.distributed import DistInfo, barrier, cleanup, gather_batch, init_distributed, mean_across
from upperson.train.optim import build_optimizer, lr_factor, set_epoch_lr
from upperson.train.sampler import GlobalBatchSampler, SeededSamples
from upperson.train.records import METRICS_NAME, RunRecordError, RunRecords, check_run_records, find_state_dir
from upperson.train.rundir import CONFIG_NAME, RunFolder, RunFolderError, log_config_changes
from upperson.train.state import load_training_state, read_state_meta, save_training_state
from upperson.vocab import VOCAB_NAME, build_vocabulary, write_vocabulary

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C (SIGINT) during training; the message says where and how ``--resume`` continues."""


class _Position:
    """Where training is, for the Ctrl-C message: epochs saved, current epoch and step (1-based)."""

    def __init__(self) -> None:
        self.saved = 0  # epochs whose state is in last/
        self.epoch: Optional[int] = None
        self.step = 0
        self.finishing = False

    def interrupted(self) -> str:
        if self.finishing:
            return (f"interrupted during the final evaluation; all {self.saved} epochs are saved, "
                    "`--resume` finishes the run")
        if self.epoch is None:
            return f"interrupted before epoch {self.saved + 1} began; `--resume` continues from epoch {self.saved + 1}"
        return f"interrupted at epoch {self.epoch} step {self.step}; `--resume` continues from epoch {self.saved + 1}"


class _RunLog:
    """Log records of ``upperson`` held in memory until the run folder exists, then ``train.log``."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.file: Optional[logging.Handler] = None
        # holds every record (never flushes by itself) until to_file gives it the file as target
        self._hold = MemoryHandler(capacity=sys.maxsize, flushLevel=sys.maxsize)
        self._level: Optional[int] = None
        if enabled:
            logger = logging.getLogger("upperson")
            if logger.getEffectiveLevel() > logging.INFO:  # a library caller without logging set up:
                self._level = logger.level                 # train.log still gets the INFO lines
                logger.setLevel(logging.INFO)
            logger.addHandler(self._hold)

    def to_file(self, path: Path) -> None:
        """Open ``train.log`` (appending) and write the held records into it."""
        if not self.enabled:
            return
        self.file = logging.FileHandler(path, encoding="utf-8")
        self.file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._hold.setTarget(self.file)
        self._hold.flush()
        logger = logging.getLogger("upperson")
        logger.removeHandler(self._hold)
        logger.addHandler(self.file)

    def error(self, message: str) -> None:
        """Write an ``error:`` line to ``train.log`` only (the command line prints its own)."""
        if self.file is not None:
            self.file.handle(logging.makeLogRecord({"name": __name__, "levelno": logging.ERROR,
                                                    "levelname": "ERROR", "msg": f"error: {message}"}))

    def close(self) -> None:
        logger = logging.getLogger("upperson")
        logger.removeHandler(self._hold)
        if self.file is not None:
            logger.removeHandler(self.file)
            self.file.close()
        if self._level is not None:
            logger.setLevel(self._level)
            self._level = None


def selection_split(cfg: ExperimentConfig, data: PedesDataset) -> Optional[str]:
    """The split that chooses the checkpoint: val where there is one, test only when asked.

    None when the dataset has no evaluation split (a pretraining corpus): the last epoch is kept.
    """
    has = {name for name, records in data.splits.items() if records}
    if cfg.train.select_on == "test" and "test" in has:
        log.warning("model selection on the TEST split (as the paper's code does): test scores are optimistic")
        return "test"
    if "val" in has:
        return "val"
    if "test" in has:
        log.warning("dataset %s has no val split: selecting the checkpoint on the TEST split (to select on val, "
                    "hold out train identities with %s=N)", data.name, VAL_OPTION)
        return "test"
    log.warning("dataset %s has no val or test split: no evaluation, the last epoch is kept", data.name)
    return None


def _cast_frozen_to_half(model: UPPerson, precision: str) -> None:
    """Under mixed precision, keep frozen backbone weights in half precision (PETL weights stay fp32)."""
    dtype = half_dtype(precision)
    for p in model.parameters():
        if not p.requires_grad:
            p.data = p.data.to(dtype)


def _write_metrics_log(path: Path, rows: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` from the rows saved with the state (atomically)."""
    try:
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    except OSError as exc:
        if is_disk_full(exc):
            raise
        raise RunFolderError(f"cannot write {path}: {exc.strerror or exc}; the epochs' rows are saved with the "
                             f"state in {path.parent / 'last' / 'state.json'}, and --resume rewrites {path.name} "
                             "from it") from exc


def _epoch_bytes(model: UPPerson) -> int:
    """About what one epoch writes before the old files go: best/ and last/ (weights, Adam's two moments)."""
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    return 5 * trainable + (1 << 20)


def _disk_guard(run_dir: Path, model: UPPerson, what: str):
    """One :class:`~upperson.io.DiskFullError` for a full disk while writing ``what``, temporary files removed."""
    return disk_full_reported(run_dir, _epoch_bytes(model), what,
                              "run the same command with --resume (the last complete state in last/ is kept)")


def _resume_records(run_dir: Path, info: DistInfo) -> RunRecords:
    """The saved state to resume from: on the writer, cross-checked with metrics.jsonl and config.yaml."""
    if info.is_main:
        records = check_run_records(run_dir)  # refuses records that disagree, before any data is read
        for note in records.notes:
            log.warning("%s", note)
        return records
    state_dir = find_state_dir(run_dir)
    return RunRecords(state_dir, read_state_meta(state_dir) if state_dir else None)


def _steps_fit(steps: set[int], expected: int, scaler_enabled: bool) -> bool:
    """Adam's step count after the epochs done (a GradScaler skips the steps whose gradients overflowed)."""
    if not steps:
        return False
    return max(steps) <= expected and min(steps) >= 1 if scaler_enabled else steps == {expected}


def _check_resumed_optimizer(optimizer: torch.optim.Optimizer, records: RunRecords, cfg: ExperimentConfig,
                             config_lrs: list[float], steps_per_epoch: int, scaler_enabled: bool) -> None:
    """The optimiser state must be that of the epochs done: its step count, and learning rates that
    are the config's (``config_lrs``: each group's initial lr as the config gives it) on its schedule."""
    meta = records.meta
    path = records.state_dir / "state.json"
    epoch = meta["progress"]["epoch"]
    expected = (epoch + 1) * steps_per_epoch
    steps = {int(st["step"]) for st in optimizer.state.values() if "step" in st}
    if not _steps_fit(steps, expected, scaler_enabled):
        raise RunRecordError(
            f"{path}: the optimizer has done {sorted(steps)} step(s), but {epoch + 1} epoch(s) of {steps_per_epoch} "
            f"steps make {expected}: progress.epoch does not fit the optimizer state; the file was changed outside "
            "the tool: restore it, or start a new run")
    recorded = meta.get("config", {}).get("train", {})
    sched = dataclasses.replace(cfg.train, epochs=recorded.get("epochs", cfg.train.epochs))
    for i, (g, initial) in enumerate(zip(optimizer.param_groups, config_lrs)):
        want = initial * lr_factor(epoch, sched) if meta.get("version", 1) >= 3 else g["lr"]
        if not math.isclose(g["initial_lr"], initial, rel_tol=1e-9) or not math.isclose(g["lr"], want, rel_tol=1e-9):
            raise RunRecordError(
                f"{path}: optimizer.param_groups[{i}] has lr {g['lr']} (initial_lr {g['initial_lr']}), but the "
                f"config's schedule gives {want} (initial_lr {initial}) after epoch {epoch + 1}; the state or "
                "config.yaml was changed outside the tool: restore it, or start a new run")


def evaluations_since_best(history: list[dict], best_epoch: int) -> int:
    """How many evaluated epochs in ``history`` came after the best one (the early-stopping count)."""
    return sum(1 for row in history if "R1" in row and row["epoch"] > best_epoch)


def _save_best(model: UPPerson, run_dir: Path, extra: dict, data: PedesDataset) -> None:
    """Write ``run_dir/best``, with the training captions' vocabulary as its ``vocab.json`` sidecar."""
    tmp = run_dir / "best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tempfile.TemporaryDirectory() as scratch:
        vocab = write_vocabulary(build_vocabulary(c for r in data.split("train") for c in r.captions),
                                 Path(scratch) / VOCAB_NAME)
        save_petl(model, tmp, extra=extra, files={VOCAB_NAME: vocab})
    replace_dir(tmp, run_dir / "best")


def train(cfg: ExperimentConfig, output_dir: Union[str, Path], *, resume: bool = False,
          device: Optional[str] = None, progress: bool = True) -> dict[str, Any]:
    """Train ``cfg`` into ``output_dir``; returns the results (also written to results.json)."""
    info = init_distributed(device)
    try:
        return _train(cfg, Path(output_dir), resume, info, progress)
    finally:
        cleanup(info)


def _train(cfg: ExperimentConfig, run_dir: Path, resume: bool, info: DistInfo, progress: bool) -> dict[str, Any]:
    if cfg.data.root is None:
        raise ValueError("no data root: pass --data-root DIR (or set data.root)")
    folder = RunFolder(run_dir, resume) if info.is_main else None
    if folder is not None:
        folder.open()  # the lock; a new run's folder is created here and removed again if the start fails
    runlog = _RunLog(info.is_main)
    pos = _Position()
    try:
        return _train_in(cfg, run_dir, resume, info, progress and info.is_main, folder, runlog, pos)
    except KeyboardInterrupt:
        if folder is not None and not folder.started:
            folder.abandon()
            raise TrainingInterrupted(f"interrupted before training started; {run_dir} was not changed") from None
        message = pos.interrupted()
        runlog.error(message)
        raise TrainingInterrupted(message) from None
    except BaseException as exc:
        if folder is not None and not folder.started:
            folder.abandon()
        else:
            runlog.error(" ".join(str(exc).split()) or type(exc).__name__)
        raise
    finally:
        runlog.close()
        if folder is not None:
            folder.close()


def _start(cfg: ExperimentConfig, run_dir: Path, folder: Optional[RunFolder], runlog: _RunLog,
           records: RunRecords) -> str:
    """Everything is checked: write config.yaml (atomically) and open train.log. The run exists from here.

    Returns the SHA-256 of the config.yaml written (recorded with each state), and rewrites
    metrics.jsonl when the records check found rows missing.
    """
    if folder is None:
        return ""
    with disk_full_reported(run_dir, 1 << 20, CONFIG_NAME, "run the same command again"):
        save_config(cfg, run_dir / CONFIG_NAME)
    digest = file_digest(run_dir / CONFIG_NAME)  # under the lock, just written
    folder.started = True
    runlog.to_file(run_dir / "train.log")
    for name in ("best", "last"):  # a power cut or kill in replace_dir (the state was read before)
        recover_dir(run_dir / name)
    if records.repair_metrics:
        _write_metrics_log(run_dir / METRICS_NAME, records.history)
    return digest


def _train_in(cfg: ExperimentConfig, run_dir: Path, resume: bool, info: DistInfo, progress: bool,
              folder: Optional[RunFolder], runlog: _RunLog, pos: _Position) -> dict[str, Any]:
    t_cfg = cfg.train
    if resume and info.is_main:
        log_config_changes(run_dir, cfg)  # refuses unsafe changes before any data is read
    records = _resume_records(run_dir, info) if resume else RunRecords()
    saved_state = records.state_dir
    if saved_state is not None:
        done_epochs = records.meta["progress"]["epoch"] + 1
        if t_cfg.epochs < done_epochs:
            raise RunFolderError(f"--resume: train.epochs={t_cfg.epochs} but {run_dir} has already done "
                                 f"{done_epochs} epochs; set train.epochs >= {done_epochs}")
    seed_everything(t_cfg.seed)
    device = info.device

    data = load_dataset(cfg.data.dataset, cfg.data.root, skip_bad_images=cfg.data.skip_bad_images)  # logs a summary
    if cfg.data.val_from_train is not None:  # a dataset without val: whole train identities as val, said out loud
        data = hold_out_val(data, cfg.data.val_from_train, cfg.data.val_from_train_seed)
    select = selection_split(cfg, data)
    tokenizer = build_tokenizer(cfg.model.name)

    model = build_model(cfg.model).to(device)
    report = count_parameters(model)
    if info.is_main:
        log.info("parameters:\n%s", report.table())
    amp = mixed_precision(device, t_cfg.precision, t_cfg.amp_on_cpu)  # fp32 on CPU unless train.amp_on_cpu
    if t_cfg.backbone_half and cfg.model.freeze_backbone and amp != "fp32":
        _cast_frozen_to_half(model, amp)
    if t_cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
        if device.type == "cpu":
            return_freed_memory_to_os()  # else glibc keeps the freed activations resident
    loss_module = build_loss(cfg.loss).to(device)

    best_score, best_epoch, start_epoch = -math.inf, -1, 0
    history: list[dict] = []
    train_time = 0.0
    if t_cfg.epochs > 0:
        train_set = SeededSamples(
            TrainCaptionDataset(
                data.split("train"),
                build_transforms(model.image_size, train=True, augment=cfg.data.augment),
                tokenizer,
                caption_mask_prob=cfg.data.caption_mask_prob,
                seed=t_cfg.seed,
                cache_images=cfg.data.cache_images,
            ),
            seed=t_cfg.seed,
        )
        sampler = GlobalBatchSampler(len(train_set), cfg.data.batch_size, seed=t_cfg.seed,
                                     rank=info.rank, world_size=info.world_size)
        loader = DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            pin_memory=device.type == "cuda")
        optimizer = build_optimizer(model, t_cfg, extra=list(loss_module.parameters()))
        scaler = grad_scaler(device, amp)
        if resume:
            state_dir = saved_state  # found (and its records checked) above
            if state_dir is None:
                log.warning("--resume: no saved state in %s, starting from scratch", run_dir)
            else:
                config_lrs = [g["initial_lr"] for g in optimizer.param_groups]
                done = load_training_state(state_dir, model, optimizer, loss_module, scaler, meta=records.meta)
                steps_per_epoch = min(len(loader), t_cfg.max_steps_per_epoch or len(loader))
                _check_resumed_optimizer(optimizer, records, cfg, config_lrs, steps_per_epoch, scaler.is_enabled())
                start_epoch = done["epoch"] + 1  # "epoch" is the 0-based index of the last epoch done
                best_score, best_epoch = done["best_score"], done["best_epoch"]
                train_time = done.get("train_time_s", 0.0)
                history = [dict(r) for r in records.history]  # rows count from 1
                pos.saved = start_epoch
                log.info("resumed %s after %d epoch(s) (best %s R1 %.2f at epoch %d); continuing with epoch %d of %d",
                         run_dir, start_epoch, select, best_score, best_epoch, start_epoch + 1, t_cfg.epochs)
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
            if info.enabled else model
        barrier(info)  # every rank has read the saved state before the writer tidies last.old/last.tmp
        config_sha = _start(cfg, run_dir, folder, runlog, records)
        recorded_config = to_dict(cfg)
        steps_per_epoch = min(len(loader), t_cfg.max_steps_per_epoch or len(loader))
        global_step = start_epoch * steps_per_epoch
        board = None
        if t_cfg.tensorboard and info.is_main:
            # imported only when asked for: TensorBoard adds about half a second to the start
            from upperson.train.tensorboard import TensorBoardLog

            board = TensorBoardLog(run_dir, resume_step=global_step + 1 if start_epoch else None)

        for epoch in range(start_epoch, t_cfg.epochs):
            if t_cfg.early_stop_patience and mean_across(
                    float(info.is_main and evaluations_since_best(history, best_epoch) >= t_cfg.early_stop_patience), info) > 0:
                log.info("early stop before epoch %d: %s R1 has not improved for %d evaluation(s) since epoch %d (%.2f)",
                         epoch + 1, select, t_cfg.early_stop_patience, best_epoch, best_score)
                break
            pos.epoch, pos.step = epoch + 1, 0
            sampler.set_epoch(epoch)
            train_set.set_epoch(epoch)
            set_epoch_lr(optimizer, epoch, t_cfg)
            model.train()
            t0 = time.time()
            loss_sum, steps, samples = 0.0, 0, 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{t_cfg.epochs}", disable=not progress, leave=False)
            for batch in bar:
                if t_cfg.max_steps_per_epoch is not None and steps >= t_cfg.max_steps_per_epoch:
                    break
                pos.step = steps + 1  # the step in progress, 1-based
                step_start = time.perf_counter()
                images = batch["image"].to(device, non_blocking=True)
                tokens = batch["tokens"].to(device, non_blocking=True)
                pids = batch["pid"].to(device, non_blocking=True)
                with autocast(device, amp, cpu=t_cfg.amp_on_cpu):
                    f, g = net(images, tokens)
                f, g, all_pids = gather_batch(f.float(), info), gather_batch(g.float(), info), gather_batch(pids, info)
                # every rank computes the loss of the whole global batch, with gradients into its
                # own features; DDP averages over ranks, so scale by the world size
                loss = loss_module(f, g, all_pids) * info.world_size
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {steps + 1}; training stopped. "
                        f"The last good state is in {run_dir / 'last'} (epoch {epoch}), the best checkpoint in "
                        f"{run_dir / 'best'}. Try a lower train.lr, or train.precision=fp32."
                    )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                loss_sum += float(loss.detach()) / info.world_size
                steps += 1
                global_step += 1
                if board is not None:
                    board.step(global_step, loss=float(loss.detach()) / info.world_size,
                               lr=optimizer.param_groups[0]["lr"], step_time_s=time.perf_counter() - step_start)
                samples += len(images) * info.world_size
                if progress and steps % 10 == 0:
                    bar.set_postfix(loss=f"{loss_sum / steps:.3f}")
                elif not progress and info.is_main and t_cfg.log_every and steps % t_cfg.log_every == 0:
                    log.info("epoch %d step %d/%d: loss %.4f", epoch + 1, steps, len(loader), loss_sum / steps)
            epoch_time = time.time() - t0
            train_time += epoch_time
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "loss": mean_across(loss_sum / max(1, steps), info),
                "lr": optimizer.param_groups[0]["lr"],
                "time_s": round(epoch_time, 2),
                "samples_per_s": round(samples / max(epoch_time, 1e-9), 1),
            }
            if "log_scale" in dict(loss_module.named_parameters()):
                row["temperature"] = float(loss_module.temperature.detach())
            evaluate_now = select is not None and t_cfg.eval_every > 0 and ((epoch + 1) % t_cfg.eval_every == 0 or epoch + 1 == t_cfg.epochs)
            if info.is_main:
                if evaluate_now:
                    metrics = evaluate(model, data.split(select), tokenizer, batch_size=cfg.data.eval_batch_size,
                                       precision=t_cfg.precision, progress=progress)
                    row.update({"split": select, **{k: metrics[k] for k in ("R1", "R5", "R10", "mAP", "mINP")}})
                    if metrics["R1"] > best_score:
                        best_score, best_epoch = metrics["R1"], epoch + 1
                        with _disk_guard(run_dir, model, "best/"):
                            _save_best(model, run_dir, {"epoch": epoch + 1, "split": select, "metrics": metrics}, data)
                elif select is None or t_cfg.eval_every <= 0:
                    best_epoch = epoch + 1  # no evaluation: the last epoch is the result
                    with _disk_guard(run_dir, model, "best/"):
                        _save_best(model, run_dir, {"epoch": epoch + 1}, data)
                log.info("epoch %d: loss %.4f%s", epoch + 1, row["loss"],
                         f", {select} R1 {row['R1']:.2f} mAP {row['mAP']:.2f}" if "R1" in row else "")
                history.append(row)
                if board is not None:
                    board.epoch(global_step, row, model.prefix_scales())
                with _disk_guard(run_dir, model, "last/ and metrics.jsonl"):
                    # the epoch's state and its row are one unit: the rows travel inside last/state.json
                    save_training_state(run_dir, model, optimizer, loss_module, {
                        "epoch": epoch, "best_score": best_score, "best_epoch": best_epoch, "train_time_s": train_time,
                    }, scaler, history=history, config=recorded_config, config_sha256=config_sha)
                    pos.saved = epoch + 1
                    _write_metrics_log(run_dir / METRICS_NAME, history)
            barrier(info)
        if board is not None:
            board.close()
    else:
        _start(cfg, run_dir, folder, runlog, records)

    pos.finishing = True
    results: dict[str, Any] = {}
    if info.is_main:
        results = _finish(cfg, run_dir, model, data, tokenizer, select, best_epoch, report, train_time, progress)
    barrier(info)
    return results


def _finish(cfg: ExperimentConfig, run_dir: Path, model: UPPerson, data: PedesDataset, tokenizer, select: str,
            best_epoch: int, report, train_time: float, progress: bool) -> dict[str, Any]:
    """Evaluate the selected checkpoint on the selection split and on test; write results.json."""
    if cfg.train.epochs > 0:
        load_petl(model, run_dir / "best")
    else:
        _save_best(model, run_dir, {"epoch": 0}, data)  # zero-shot: the untrained model is the result
    eval_kw = dict(batch_size=cfg.data.eval_batch_size, precision=cfg.train.precision, progress=progress)
    final = {select: evaluate(model, data.split(select), tokenizer, **eval_kw)} if select else {}
    if select != "test" and data.splits.get("test"):
        final["test"] = evaluate(model, data.split("test"), tokenizer, **eval_kw)
    results = {
        "dataset": data.name,
        "selected_on": select,
        "best_epoch": best_epoch,
        "metrics": final,
        "parameters": report.to_json(),
        "train_time_s": round(train_time, 1),
        "config": to_dict(cfg),
    }
    if cfg.data.val_from_train is not None:  # only then: the results of other runs stay as they were
        results["val_held_out"] = held_out_record(data, cfg.data.val_from_train, cfg.data.val_from_train_seed)
    with disk_full_reported(run_dir, 1 << 20, "results.json", "run the same command with --resume"):
        atomic_write_json(run_dir / "results.json", results)
    for split, m in final.items():
        log.info("%s (%s split, checkpoint of epoch %d):\n%s", data.name, split, best_epoch, format_metrics(m))
    return results
