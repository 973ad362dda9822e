"""make lab: JupyterLab serves the notebooks with the project's environment. The server is started
as the Makefile starts it, headless on a loopback port; the test waits for its REST API to answer
(and list the notebooks), then stops it."""
import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_makefile_lab_target_installs_the_extra_and_starts_jupyterlab():
    make = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lab:.*?\n((?:\t.*\n)+)", make, re.M).group(1)
    assert ".[lab]" in recipe and "-m jupyterlab --notebook-dir notebooks --allow-root" in recipe


def test_jupyterlab_serves_the_notebooks():
    pytest.importorskip("jupyterlab")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "eoq-test"
    proc = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--notebook-dir", "notebooks", "--allow-root",
                             "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                             f"--IdentityProvider.token={token}", "--ServerApp.port_retries=0"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline, listing = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as r:
                    listing = json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        assert listing is not None, "JupyterLab did not answer within 120 s"
        names = {item["name"] for item in listing["content"]}
        assert "01_quickstart.ipynb" in names
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
