"""A practitioner's script in a process of its own: only the stock tools (transformers, peft,
huggingface_hub), none of our code imported, so nothing of ours can patch what they read; and copies of a
Hub model as another machine would hold them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

_EPILOGUE = """
import json as _json
import sys as _sys
assert not any(name.split(".")[0].startswith("clipfood") for name in _sys.modules), "our code was imported"
print("RESULT " + _json.dumps(result))
"""


def run_plain_script(script: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300) -> dict:
    """Run ``script`` (which leaves a JSON-able ``result``) with this interpreter in ``cwd``; its ``result``.

    The Hub is off (``HF_HUB_OFFLINE``), as on a machine whose cache already holds what it needs.
    """
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script) + _EPILOGUE], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


HUB_ID = "openai/clip-vit-base-patch32"
COMMIT = "3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268"


def hub_cache(root, model_dir, hub_id=HUB_ID, commit=COMMIT):
    """A Hub cache (as huggingface_hub lays it out) holding ``model_dir`` as ``hub_id`` at ``commit``."""
    repo = root / f"models--{hub_id.replace('/', '--')}"
    shutil.copytree(model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


def local_copy(root, model_dir, name_or_path=HUB_ID, card: str | None = None):
    """A copy of ``model_dir`` whose config.json says ``_name_or_path``, as the Hub's own configs of older
    uploads do (``hf download … --local-dir`` keeps it)."""
    shutil.copytree(model_dir, root)
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({"_name_or_path": name_or_path, **config}))
    if card is not None:
        (root / "README.md").write_text(card)
    return root
