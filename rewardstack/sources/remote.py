"""A reward server over HTTP as a reward source (requests by the standard library).

Protocols:
- `rewardstack`: POST {url}/v1/score with {"items": [{"prompt": ..., "response": ...}, ...]} (prompts as
  strings or chat messages); the answer is RewardScores.to_json's: {"rewards": [...], "std": [...] or null, "parts": {name: [...]},
  "arm": [...] or null, "truncated": n}.
- `openrlhf`: POST {url}/get_reward with {"query": [prompt + response texts], "prompts": [...]}; the
  answer is {"rewards": [...]}. The query is the prompt's text, a newline, then the response; `prompts`
  holds each query's prompt part (the text and its newline), so a server can cut the query exactly.
- `classify`: the classify API of vLLM (POST {url}/classify) and SGLang (`path: /v1/classify`) serving a
  sequence-classification reward model: {"model": ..., "input": [conversation texts], "activation": false,
  "use_activation": false, "add_special_tokens": ...}; the reward is each answer item's probs[0] (the raw
  score: activation off). Conversations are rendered with the chat template of `tokenizer` (the served
  model's folder or Hub id) when given, else as the openrlhf query text.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from ..data.encode import as_messages, render
from ..errors import UserError
from ..scores import RewardScores
from .kinds import Place, register_kind, required
from .rules import prompt_text

PATHS = {"rewardstack": "/v1/score", "openrlhf": "/get_reward", "classify": "/classify"}
PROTOCOLS = tuple(PATHS)
SECRET_QUERY = re.compile(r"(key|token|secret|password|passwd|auth|signature|sig)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` safe to show: user:password@ and the values of secret-looking query parameters replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc if "@" not in parts.netloc else "***@" + parts.netloc.rsplit("@", 1)[1]
    query = "&".join(f"{k}=***" if SECRET_QUERY.search(k) else f"{k}={v}" for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class Remote:
    """A reward server; `api_key` is sent as `Authorization: Bearer KEY`. Messages show the URL redacted.
    `path` overrides the protocol's route; `model` and `tokenizer` (an object) serve the classify protocol."""

    def __init__(self, url: str, protocol: str = "rewardstack", timeout: float = 60.0, batch_size: int = 64, api_key: str | None = None,
                 path: str | None = None, model: str | None = None, tokenizer=None):
        if protocol not in PROTOCOLS:
            raise UserError(f"remote: protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
        self.url, self.protocol, self.timeout, self.batch_size, self.api_key = url.rstrip("/"), protocol, timeout, batch_size, api_key
        self.path, self.model, self.tokenizer = path or PATHS[protocol], model, tokenizer
        self.shown = redact_url(self.url)

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        """Rows sent in requests of self.batch_size rows."""
        if len(prompts) != len(responses):
            raise UserError(f"remote {self.shown}: {len(prompts)} prompts but {len(responses)} responses")
        chunks = [self._request(prompts[i : i + self.batch_size], responses[i : i + self.batch_size]) for i in range(0, len(prompts), self.batch_size)]
        if not chunks:
            return RewardScores(mean=np.empty(0))
        stds = None if any(c.std is None for c in chunks) else np.concatenate([c.std for c in chunks])
        parts = {name: np.concatenate([c.parts[name] for c in chunks]) for name in chunks[0].parts}
        arms = None if any(c.arm is None for c in chunks) else np.concatenate([c.arm for c in chunks])
        return RewardScores(mean=np.concatenate([c.mean for c in chunks]), std=stds, parts=parts, arm=arms,
                            truncated=sum(c.truncated for c in chunks))

    def _request(self, prompts, responses) -> RewardScores:
        if self.protocol == "rewardstack":
            body = {"items": [{"prompt": p if isinstance(p, str) else list(p), "response": r} for p, r in zip(prompts, responses)]}
        elif self.protocol == "openrlhf":
            texts = [prompt_text(p) + "\n" for p in prompts]
            body = {"query": [t + r for t, r in zip(texts, responses)], "prompts": texts}
        else:
            body = {"input": [self._conversation(p, r) for p, r in zip(prompts, responses)], "activation": False, "use_activation": False,
                    "add_special_tokens": self.tokenizer is None or not self.tokenizer.chat_template, **({"model": self.model} if self.model else {})}
        data = self._post(body)
        if self.protocol == "classify":
            data = {"rewards": self._classify_rewards(data, len(responses))}
        rewards = data.get("rewards") if isinstance(data, dict) else None
        if not isinstance(rewards, list) or len(rewards) != len(responses):
            raise UserError(f"remote {self.shown + self.path}: expected 'rewards' with {len(responses)} numbers")
        if not all(isinstance(r, (int, float)) and not isinstance(r, bool) and np.isfinite(r) for r in rewards):
            raise UserError(f"remote {self.shown + self.path}: the answer holds rewards that are not finite numbers")
        return RewardScores.from_json(data)

    def _post(self, body: dict):
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        request = urllib.request.Request(self.url + self.path, data=json.dumps(body).encode(), headers=headers)
        shown = self.shown + self.path
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as err:
            raise UserError(f"remote {shown}: HTTP {err.code}: {err.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise UserError(f"remote {shown}: cannot reach the server ({getattr(err, 'reason', err)})") from None
        except json.JSONDecodeError:
            raise UserError(f"remote {shown}: the answer is not JSON") from None

    def _conversation(self, prompt, response: str) -> str:
        """One classify input: the conversation by the tokenizer's chat template, else the openrlhf query."""
        if self.tokenizer is None:
            return prompt_text(prompt) + "\n" + response
        return "".join(render(self.tokenizer, as_messages(prompt), response))

    def _classify_rewards(self, data, rows: int) -> list:
        """probs[0] of each classify item, in `index` order; a model of several classes is no reward model."""
        items = data.get("data") if isinstance(data, dict) else None
        shown = self.shown + self.path
        if not isinstance(items, list) or len(items) != rows or sorted(i.get("index", -1) for i in items if isinstance(i, dict)) != list(range(rows)):
            raise UserError(f"remote {shown}: expected 'data' with the {rows} items of a classify answer, indexed 0..{rows - 1}")
        rewards = [None] * rows
        for item in items:
            probs = item.get("probs")
            if not isinstance(probs, list) or len(probs) != 1:
                raise UserError(f"remote {shown}: item {item['index']} has {len(probs) if isinstance(probs, list) else 'no'} scores; "
                                "a reward model gives one (a sequence classifier with num_labels=1)")
            rewards[item["index"]] = probs[0]
        return rewards


@register_kind("remote")
def _build_remote(node: dict, place: Place) -> Remote:
    tokenizer = None
    if "tokenizer" in node:
        local = place.base_dir / str(node["tokenizer"])
        tokenizer = _tokenizer(local if local.exists() else str(node["tokenizer"]), place.where)
    return Remote(required(node, "url", place.where), node.get("protocol", "rewardstack"), float(node.get("timeout", 60)),
                  int(node.get("batch_size", 64)), _api_key(node, place.where), node.get("path"), node.get("model"), tokenizer)


def _tokenizer(name: str, where: str):
    """The tokenizer of a served model (a folder or cached Hub id), for its chat template."""
    from transformers import AutoTokenizer

    from ..backbones import download_hint, downloads_allowed

    try:
        return AutoTokenizer.from_pretrained(str(name), local_files_only=not downloads_allowed())
    except (OSError, ValueError) as err:
        raise UserError(f"{where}.tokenizer: cannot load {name!r}{download_hint()}: {str(err).splitlines()[0]}") from None


def _api_key(node: dict, where: str) -> str | None:
    """A remote node's API key, from the environment variable its `api_key_env` names (never the YAML)."""
    if "api_key" in node:
        raise UserError(f"{where}: do not write an API key into the tree; put it in an environment variable and name that with `api_key_env`")
    name = node.get("api_key_env")
    if name is None:
        return None
    if not os.environ.get(str(name)):
        raise UserError(f"{where}.api_key_env: the environment variable {name} is not set")
    return os.environ[str(name)]
