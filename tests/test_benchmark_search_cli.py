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
