"""The scripts, checked without a GPU and without running the long ones: gpu_check.sh and ddp_check.py (never run on
a GPU here), every shell script parses, the world study scripts refuse a missing world in one line."""

from __future__ import annotations

import py_compile
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_battery import cli_env

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def test_gpu_check_is_valid_bash_and_explains_its_usage():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    proc = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage:" in proc.stderr
    proc = subprocess.run(["bash", str(SCRIPT), "--outdir"], capture_output=True, text=True)  # an option, not a folder
    assert proc.returncode == 2 and "usage:" in proc.stderr
    py_compile.compile(str(REPO / "scripts" / "ddp_check.py"), doraise=True)


def test_gpu_commands_import_without_the_optional_packages():
    # the GPU machine has torch but none of the demo/analysis packages: importing them must not be needed
    code = (
        "import sys\n"
        "for m in ('gradio', 'umap', 'pandas', 'matplotlib', 'sklearn', 'timm', 'huggingface_hub', 'playwright'):\n"
        "    sys.modules[m] = None\n"
        "from upperson.cli import build_parser\n"
        "build_parser()\n"
        "import upperson.cli.benchmark, upperson.cli.doctor, upperson.cli.train, upperson.cli.toypedes\n"
        "import upperson.train, upperson.evaluation, upperson.index, upperson.data.toypedes\n"
        "sys.argv = ['x']\n"
        "import runpy; runpy.run_path('scripts/ddp_check.py', run_name='not_main')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO / "scripts").glob("*.sh")))
def test_every_shell_script_parses(script):
    """The long-running scripts (the world's studies) are not run by the suite: each at least parses."""
    proc = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_world_study_script_without_the_data_is_one_error_line(tmp_path):
    for script in ("world_budget.sh", "world_ablation.sh"):
        proc = subprocess.run(["bash", str(REPO / "scripts" / script), str(tmp_path / "none")],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, script
        assert "run scripts/world_pipeline.sh" in proc.stderr
