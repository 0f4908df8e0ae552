"""Shared fixtures: tiny configs that build in well under a second."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from upperson.config import ModelConfig
from upperson.petl import AdapterConfig, LoraConfig, PrefixConfig


def tiny_model_config(**overrides) -> ModelConfig:
    """The project's tiny backbone (upp-tiny), random weights, all components on, small sizes."""
    cfg = ModelConfig(
        name="upp-tiny",
        quick_gelu=True,
        pretrained=None,
        image_size=(48, 16),
        prefix=PrefixConfig(length=3),
        lora=LoraConfig(rank=4),
        adapter=AdapterConfig(),
    )
    return dataclasses.replace(cfg, **overrides)


def tiny_batch(n: int):
    """n random images for the tiny model, n tokenized captions of different lengths, pids two by two."""
    images = torch.randn(n, 3, 48, 16)
    tokens = torch.zeros(n, 77, dtype=torch.long)
    for i in range(n):
        tokens[i, 0], tokens[i, 1:4 + i] = 49406, torch.randint(1, 49000, (3 + i,))
        tokens[i, 4 + i] = 49407
    return images, tokens, torch.arange(n) // 2


def perturbed_tiny_model():
    """A tiny model (random backbone) with non-trivial PETL weights, in eval mode: its
    prefix/LoRA/adapters change the features, so UP-Person and zero-shot rank differently."""
    from upperson.model import build_model

    torch.manual_seed(0)
    m = build_model(tiny_model_config())
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def random_image(path, seed: int):
    """A 12 x 24 RGB PNG of seeded noise at ``path``; returns ``path``."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand(24, 12, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(arr, "RGB").save(path)
    return path


@pytest.fixture
def tiny_cfg() -> ModelConfig:
    return tiny_model_config()


# Tests use tiny models, for which one thread is as fast as two and never oversubscribes
# the cores when the suite shares the machine; UPPERSON_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("UPPERSON_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def toypedes_root(tmp_path_factory):
    """ToyPEDES 'tiny' (24/8/8 identities), generated once per test session."""
    from upperson.data.toypedes import generate_toypedes

    root = tmp_path_factory.mktemp("toypedes")
    generate_toypedes(root, preset="tiny", seed=0)
    return root


def pytest_configure(config) -> None:
    # third-party deprecation chatter (gradio, umap, open_clip) is not ours to fix here
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning")
