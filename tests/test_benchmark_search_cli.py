"""`benchmark --search`'s approximate-index flags reach the benchmark, and bad values are one error line."""
import pytest

import upperson.search.benchmark as search_benchmark
from upperson.cli import main
from upperson.search.approximate import AnnConfig


@pytest.mark.parametrize("flag", ["--search-nlist", "--search-nprobe", "--search-m", "--search-rerank"])
def test_a_non_positive_ann_setting_is_one_error_naming_the_flag(flag, capsys):
    assert main(["benchmark", "--search", "--search-sizes", "10k", flag, "0"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} 0:")


def test_a_missing_workdir_is_refused_before_anything_is_written(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["benchmark", "--search", "--search-sizes", "10k", "--search-workdir", str(missing)]) == 2
    assert f"--search-workdir {missing}" in capsys.readouterr().err
    assert not missing.exists()


def test_the_ann_flags_and_workdir_reach_the_benchmark(tmp_path, monkeypatch):
    seen = {}

    def fake(sizes, **kwargs):
        seen.update(kwargs, sizes=sizes)
        raise RuntimeError("stop here")  # the flags are what this test checks, not a benchmark run

    monkeypatch.setattr(search_benchmark, "benchmark_search", fake)
    with pytest.raises(RuntimeError, match="stop here"):
        main(["-v", "benchmark", "--search", "--search-sizes", "10M", "--search-nlist", "4096", "--search-nprobe", "200",
              "--search-m", "64", "--search-rerank", "512", "--search-workdir", str(tmp_path)])
    assert seen["sizes"] == [10_000_000]
    assert seen["ann"] == AnnConfig(nlist=4096, nprobe=200, m=64, rerank=512)
    assert seen["workdir"] == tmp_path


def test_reuse_needs_a_workdir_and_reaches_the_benchmark(tmp_path, monkeypatch, capsys):
    assert main(["benchmark", "--search", "--search-sizes", "10k", "--search-reuse"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: --search-reuse: give --search-workdir")
    seen = {}

    def fake(sizes, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(search_benchmark, "benchmark_search", fake)
    with pytest.raises(RuntimeError, match="stop here"):
        main(["-v", "benchmark", "--search", "--search-sizes", "10k", "--search-workdir", str(tmp_path), "--search-reuse"])
    assert seen["reuse"] is True and seen["workdir"] == tmp_path


def test_a_kept_gallery_and_its_approximate_index_are_reused_only_with_the_same_settings(tmp_path):
    from upperson.search.store import IndexStore

    ann = AnnConfig(nlist=16, m=4, recall_queries=20)
    run = dict(dim=16, repeats=2, queries=4, ann=ann, workdir=tmp_path, reuse=True)
    first = search_benchmark.benchmark_search([10_000], **run)
    folder = tmp_path / "synthetic-10000-16d-float16"
    files = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file() and p.name != ".lock"}
    second = search_benchmark.benchmark_search([10_000], **run)
    assert [r["gallery_reused"] for r in first] == [False] * len(first)
    assert [r["gallery_reused"] for r in second] == [True] * len(second)
    approx = [r for r in first + second if r["engine"] == "approximate"]
    assert [r["ann_reused"] for r in approx] == [False, True]
    assert approx[1]["build_s"] == IndexStore.open(folder).manifest.ann["build_seconds"]  # the recorded build
    assert approx[0]["recall@10"] == approx[1]["recall@10"] and approx[0]["recall@10_build"] == approx[1]["recall@10_build"]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing written again
    # other features (similarities) or another index (lists): written or built again
    other = search_benchmark.Similarity(0.8, 0.2)
    third = search_benchmark.benchmark_search([10_000], **run, similarity=other)
    assert not third[0]["gallery_reused"] and IndexStore.open(folder).manifest.build["same"] == 0.8
    fourth = search_benchmark.benchmark_search([10_000], **{**run, "ann": AnnConfig(nlist=32, m=4, recall_queries=20)},
                                               similarity=other)
    assert fourth[0]["gallery_reused"] and not fourth[-1]["ann_reused"] and fourth[-1]["nlist"] == 32
    assert sorted(p.name for p in (folder / "ann").iterdir()) == ["ivfpq-10000.faiss"]
