"""JupyterLab starts from the course's environment and serves /lab and notebook 00 on localhost."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_jupyterlab_serves_lab_and_notebook_00(tmp_path):
    jupyter = Path(sys.executable).parent / "jupyter"
    assert jupyter.exists(), f"no jupyter next to {sys.executable}"
    port, token = _free_port(), "course-test"
    server = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={ROOT / 'notebooks'}",
         "--ServerApp.open_browser=False", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if os.geteuid() == 0 else []),  # CI runs as root
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
        env={"JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
             "HOME": str(tmp_path), "PATH": str(jupyter.parent) + ":/usr/bin:/bin"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, page = _get(f"{base}/lab?token={token}")
                break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode(errors="replace")[-2000:]
                assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s"
                time.sleep(0.5)
        assert status == 200 and b"JupyterLab" in page
        status, body = _get(f"{base}/api/contents/00_start_here.ipynb?token={token}")
        model = json.loads(body)
        assert status == 200 and model["type"] == "notebook" and model["content"]["cells"]
        status, _ = _get(f"{base}/lab/tree/00_start_here.ipynb?token={token}")
        assert status == 200
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
