"""The reward server (`rewardstack serve`): see app.py for the endpoints, batching.py for batching."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from ..errors import UserError
from .app import ServeConfig, create_app, describe

API_KEY_ENV = "REWARDSTACK_API_KEY"

__all__ = ["ServeConfig", "api_key", "create_app", "describe", "serve"]


def api_key(key_file: str | Path | None) -> str | None:
    """The API key from `key_file` (first line) or the REWARDSTACK_API_KEY environment variable."""
    if key_file is not None:
        try:
            key = Path(key_file).read_text().strip()
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


def serve(source, config: ServeConfig, description: dict | None = None) -> None:
    """Serve a reward source with uvicorn until SIGINT/SIGTERM (in-flight requests finish first, up to
    `config.graceful_shutdown_s`); the API key comes from `config.api_key_file` or $REWARDSTACK_API_KEY."""
    import uvicorn

    key = api_key(config.api_key_file)
    if not is_loopback(config.host) and key is None:
        raise UserError(f"serving on {config.host} (not loopback) needs an API key: set {API_KEY_ENV} or pass --api-key-file")
    app = create_app(source, config, description, key)
    uvicorn.run(app, host=config.host, port=config.port, timeout_graceful_shutdown=config.graceful_shutdown_s, log_level="info")
