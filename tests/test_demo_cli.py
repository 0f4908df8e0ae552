"""``python -m demo`` on the command line: bad ports are one ``error:`` line, SIGTERM cleans up."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.cli_battery import REPO, assert_one_error, cli_env, run_cli
from tests.test_demo_support import session_cache, toy_root


@pytest.mark.parametrize("port", ["99999", "0", "-1", "abc", "65536"])
def test_bad_port_is_one_error_line(port):
    proc = run_cli(["--port", port], module="demo", timeout=120)
    assert_one_error(proc, must_contain=["--port", "1 to 65535"])


@pytest.mark.parametrize("args,must", [
    (["--top-k", "0"], ["--top-k", "from 1 to 200"]),
    (["--threads", "-1", "--benchmark"], ["--threads", "from 1 up"]),
    (["--split", "nope"], ["--split", "--data-root"]),
    (["--pretrained", "w.pt"], ["--pretrained", "--checkpoint"]),
    (["--allow-root", "/no/such/folder"], ["--allow-root", "not a folder"]),
    (["--studies", "/no/such/folder"], ["--studies", "not a folder", "python -m analysis transfer"]),
    (["--gallery", "/tmp", "--index", "/tmp"], ["give one of --gallery, --data-root and --index"]),
])
def test_bad_option_is_one_error_line(args, must):
    """A number out of range, or an option that the others make meaningless, is one error line."""
    assert_one_error(run_cli(args, module="demo", timeout=120), must_contain=must)


def test_port_in_use_is_one_error_line():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proc = run_cli(["--port", str(port)], module="demo", timeout=120)
    assert_one_error(proc, must_contain=[f"port {port}", "in use"])


def test_sigterm_removes_the_temp_folder(tmp_path):
    """The folder of generated images goes on SIGTERM as on a normal exit, and the exit status is 0."""
    from PIL import Image

    from demo.gallery import dataset_gallery

    photos = tmp_path / "photos"
    photos.mkdir()
    for i, item in enumerate(dataset_gallery("toypedes", toy_root(), "test").items[:3]):
        Image.open(item.path).save(photos / f"p{i}.png")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = cli_env({"TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio"), "UPPERSON_CACHE": str(session_cache()),
                   "GRADIO_ANALYTICS_ENABLED": "False"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "demo", "--gallery", str(photos), "--port", str(port)],
                            cwd=str(REPO), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if "running at" in line or not line:
                break
        assert "running at" in line, proc.stderr.read() if proc.poll() is not None else line
        folders = list(tmp.glob("upperson-demo-*"))
        assert len(folders) == 1 and folders[0].is_dir()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    assert not folders[0].exists()
