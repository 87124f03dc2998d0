"""A fresh environment installs the whole course from a wheelhouse with the package index off.

Runs when WHEELHOUSE names a folder made by `make wheelhouse` (which runs this test itself);
without one it is skipped, since building a wheelhouse downloads ~1 GB.
"""
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = os.environ.get("WHEELHOUSE")


@pytest.mark.skipif(not WHEELHOUSE, reason="no WHEELHOUSE folder given (make wheelhouse builds one and runs this)")
def test_install_from_wheelhouse_without_index(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=WHEELHOUSE, PIP_CONFIG_FILE="/dev/null",
               HF_HUB_OFFLINE="1", COURSE_CACHE_DIR=str(Path(WHEELHOUSE) / "cache"))
    env.pop("PIP_EXTRA_INDEX_URL", None)

    def run(*args):
        done = subprocess.run([str(python), *args], cwd=ROOT, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        return done.stdout

    run("-m", "pip", "install", "-q", "torch==2.13.0")
    run("-m", "pip", "install", "-q", "-r", "requirements.txt")
    run("-m", "pip", "install", "-q", "--no-deps", "-e", ".")
    out = run("-c", "import torch, transformers, datasets, accelerate, nbval, helpers.models as m, helpers.data as d;"
                    "model, tok = m.load_encoder('minilm-en'); print(len(d.load_reviews('test')), tok('hello')['input_ids'])")
    assert out.split()[0] == str(len(__import__('helpers.data', fromlist=['x']).load_reviews('test')))
