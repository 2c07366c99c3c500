"""The reward server (`rewardstack serve`): see app.py for the endpoints, batching.py for batching."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Sequence

from ..errors import UserError
from .app import ServerSettings, create_app, describe

API_KEY_ENV = "REWARDSTACK_API_KEY"

__all__ = ["ServerSettings", "create_app", "serve", "api_key"]


def api_key(key_file: Path | None) -> str | None:
    """The API key from `key_file` (first line) or the REWARDSTACK_API_KEY environment variable."""
    if key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as err:
            raise UserError(f"{key_file}: cannot read the API key file ({err.strerror})") from None
        if not key:
            raise UserError(f"{key_file}: the API key file is empty")
        return key
    return os.environ.get(API_KEY_ENV) or None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(reward: str, host: str, port: int, settings: ServerSettings, graceful_shutdown_s: float = 30.0, allowed_modules: Sequence[str] = ()) -> None:
    """Load the source and serve it with uvicorn until SIGINT/SIGTERM (in-flight requests finish first).
    Rules in the tree may import only modules beside it and `allowed_modules` (rules.import_function)."""
    import uvicorn

    from ..sources import load_source

    if not is_loopback(host) and settings.api_key is None:
        raise UserError(f"serving on {host} (not loopback) needs an API key: set {API_KEY_ENV} or pass --api-key-file")
    app = create_app(load_source(reward, allowed_modules), settings, describe(reward))
    uvicorn.run(app, host=host, port=port, timeout_graceful_shutdown=graceful_shutdown_s, log_level="info")
