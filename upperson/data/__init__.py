"""Data: dataset readers, ToyPEDES, tokenisation, transforms and torch datasets."""

from upperson.data.datasets import GalleryDataset, ImageStore, QueryDataset, TrainCaptionDataset, relabel_pids
from upperson.data.readers import (
    CSV_CAPTION_SEP,
    DATASETS,
    load_dataset,
    read_cuhk_pedes,
    read_generic,
    read_icfg_pedes,
    read_rstpreid,
    read_toypedes,
)
from upperson.data.records import SPLITS, DatasetError, ImageRecord, PedesDataset
from upperson.data.text import MASK_TOKEN_ID, CaptionTokenizer, build_tokenizer, mask_caption_tokens
from upperson.data.transforms import CLIP_MEAN, CLIP_STD, build_transforms

__all__ = [
    "CLIP_MEAN", "CLIP_STD", "CSV_CAPTION_SEP", "DATASETS", "MASK_TOKEN_ID", "SPLITS",
    "CaptionTokenizer", "DatasetError", "GalleryDataset", "ImageRecord", "ImageStore",
    "PedesDataset", "QueryDataset", "TrainCaptionDataset",
    "build_tokenizer", "build_transforms", "load_dataset", "mask_caption_tokens",
    "read_cuhk_pedes", "read_generic", "read_icfg_pedes", "read_rstpreid", "read_toypedes",
    "relabel_pids",
]
