"""A practitioner's script in a process of its own: only the stock tools (transformers, peft,
huggingface_hub), none of our code imported, so nothing of ours can patch what they read."""

from __future__ import annotations

import json
import os
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
