"""The reward server: any reward source (model directory or YAML tree) over HTTP, with dynamic batching.

    POST /v1/score    {"items": [{"prompt", "response"}]} or {"prompt", "responses": [...]}
                      → {"rewards", "std" (or null), "parts", "arm" (or null), "truncated"}
    POST /get_reward  OpenRLHF's remote reward protocol: {"query": [full texts], "prompts": [...]}
                      → {"rewards", "scores", "extra_logs"}
    POST /classify    vLLM's classify API (verl's reward loop): {"input": [full texts], "activation": false}; also what
                      the `classify` protocol of a remote source sends
                      → {"data": [{"index", "probs": [reward]}], ...}
    POST /v1/feedback a bandit source learns: {"items": [{"prompt" (or "prompts"), "arm", "feedback"}]}
                      → {"rewards" (normalised), "steps", "saved"}; with a `state` file in the tree, the
                      state is saved and the feedback appended to bandit_log.jsonl beside it
    GET  /health, GET /v1/info, GET /openapi.json (and /docs)
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from .. import __version__
from ..data.encode import as_messages
from ..errors import UserError, require
from ..metrics import preference_probability
from ..config import ComputeConfig
from ..options import option
from ..scores import RewardScores
from ..laser.selector import BanditSelector
from ..sources.remote import redact_url
from ..sources.tree import read_tree, reward_models
from .batching import DynamicBatcher
from .conversation import ConversationSplitter, split_texts

CHARS_PER_TOKEN = 4  # token estimate for sources without a model


@dataclass
class ServeConfig:
    """Options of `rewardstack serve` (and of `create_app`, which uses those after `port`)."""

    host: str = option("127.0.0.1", "Address to bind; anything but loopback needs an API key")
    port: int = option(8000, "TCP port")
    api_key_file: str | None = option(None, "File whose first line is the API key (unset: $REWARDSTACK_API_KEY)")
    graceful_shutdown_s: float = option(30.0, "On SIGTERM, how long in-flight requests may take to finish")
    batch_size: int = option(16, "Sequences per forward pass")
    max_batch_tokens: int = option(16384, "Dynamic batching: tokens per scoring call at most")
    max_wait_ms: float = option(5.0, "Dynamic batching: how long a batch waits for more requests")
    max_queue: int = option(256, "Requests waiting at most; more get 503 with Retry-After")
    max_items: int = option(1024, "Rows per request at most (413 above)")
    max_body_mb: float = option(8.0, "Request body size limit in MiB (413 above)")
    retry_after_s: int = option(1, "The Retry-After of a 503 when the queue is full, in seconds")
    compute: ComputeConfig = option(factory=ComputeConfig)

    def __post_init__(self) -> None:
        require(self, "port", 1 <= self.port <= 65535, "a TCP port, 1 to 65535")
        for name in ("batch_size", "max_batch_tokens", "max_queue", "max_items", "max_body_mb", "retry_after_s"):
            require(self, name, getattr(self, name) > 0, "positive")
        for name in ("max_wait_ms", "graceful_shutdown_s"):
            require(self, name, getattr(self, name) >= 0, "0 or positive")


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


Prompt = str | Annotated[list[ChatMessage], Field(min_length=1)]


class ScoreItem(BaseModel):
    prompt: Prompt
    response: str


class ScoreRequest(BaseModel):
    """Either `items`, or one `prompt` with several `responses`."""

    items: list[ScoreItem] | None = Field(default=None, min_length=1)
    prompt: Prompt | None = None
    responses: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def one_form(self) -> "ScoreRequest":
        if (self.items is None) == (self.prompt is None or self.responses is None):
            raise ValueError("give either `items` or both `prompt` and `responses`")
        return self

    def rows(self) -> tuple[list, list[str]]:
        if self.items is not None:
            return [_plain(item.prompt) for item in self.items], [item.response for item in self.items]
        return [_plain(self.prompt)] * len(self.responses), list(self.responses)


class ScoreResponse(BaseModel):
    rewards: list[float]
    std: list[float] | None
    parts: dict[str, list[float]]
    arm: list[int] | None = Field(default=None, description="a bandit's chosen member per row (its index); null for other sources")
    truncated: int = Field(description="rows cut to the model's maximum length")


class FeedbackItem(BaseModel):
    """Feedback on the member a bandit chose: for one prompt, or for a batch scored with one choice."""

    prompt: Prompt | None = None
    prompts: list[Prompt] | None = Field(default=None, min_length=1, description="a per-batch choice: the batch's prompts")
    arm: int | str = Field(description="the chosen member: its index (the score's arm) or its name")
    feedback: float = Field(allow_inf_nan=False, description="raw feedback, e.g. a gold score or a user rating; higher is better")

    @model_validator(mode="after")
    def one_form(self) -> "FeedbackItem":
        if (self.prompt is None) == (self.prompts is None):
            raise ValueError("give either `prompt` or `prompts`")
        return self


class FeedbackRequest(BaseModel):
    items: list[FeedbackItem] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    rewards: list[float] = Field(description="each feedback normalised to [0, 1], as the bandit received it")
    steps: int = Field(description="feedback rounds the bandit has learned from, saved state included")
    saved: str | None = Field(description="the state file written (the tree's `state`), or null when the tree names none")


class OpenRLHFRequest(BaseModel, extra="allow"):
    query: list[str] = Field(min_length=1, description="full texts: prompt rendered with the chat template, then the response")
    prompts: list[str] | None = Field(default=None, description="the prompt part of each query, when known")


class ClassifyRequest(BaseModel, extra="allow"):
    input: str | list[str] = Field(min_length=1, description="conversations rendered with the chat template: prompt, then response")
    model: str | None = None
    activation: bool | None = Field(default=None, description="false: the raw reward; otherwise σ(reward), as vLLM's classify gives for one output")
    use_activation: bool | None = Field(default=None, description="newer vLLM's name for `activation`")


class ClassifyItem(BaseModel):
    index: int
    label: str
    probs: list[float]
    num_classes: int


class ClassifyResponse(BaseModel):
    id: str
    object: str
    created: int
    model: str
    data: list[ClassifyItem]


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


def _plain(prompt: Prompt) -> str | list[dict]:
    return prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]


def create_app(source, settings: ServeConfig | None = None, description: dict | None = None, api_key: str | None = None) -> FastAPI:
    """A FastAPI app serving `source`; `description` (the source tree, its path) is shown by /v1/info;
    with `api_key`, every route but /health needs `Authorization: Bearer KEY`."""
    scorer = _Scorer(source, settings or ServeConfig(), Path((description or {}).get("folder", ".")))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        scorer.batcher.start()
        yield
        await scorer.batcher.stop()  # uvicorn has let in-flight requests finish; their batches are done here

    def require_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), api_key.encode())):
            raise HTTPException(401, "missing or wrong API key (send `Authorization: Bearer KEY`)", headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="rewardstack reward server", version=__version__, lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=int(scorer.settings.max_body_mb * 2**20))
    app.add_exception_handler(RequestValidationError, invalid_request)
    secured = [Depends(require_key)]
    _scoring_routes(app, scorer, secured, str((description or {}).get("reward", "rewardstack")))
    _feedback_route(app, scorer, secured)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info", dependencies=secured)
    async def info() -> dict[str, Any]:
        """The served source, its models, whether any has a posterior, limits and counters."""
        bandit = scorer.source if isinstance(scorer.source, BanditSelector) else None
        return {
            "version": __version__,
            **{key: value for key, value in (description or {}).items() if key != "folder"},
            "models": [m.info() for m in scorer.models],
            "posterior": any(m.posterior is not None for m in scorer.models),
            **({"bandit": {"members": bandit.names, "steps": bandit.steps, "arm_counts": bandit.arm_counts()}} if bandit else {}),
            "limits": {k: v for k, v in asdict(scorer.settings).items() if k != "api_key_file"},
            "stats": asdict(scorer.batcher.stats),
        }

    return app


class _Scorer:
    """What the routes share: the source, its dynamic batcher, and the first model's encoder, which sizes
    requests and splits chat-rendered texts into prompt and response."""

    def __init__(self, source, settings: ServeConfig, tree_dir: Path):
        self.source, self.settings, self.tree_dir = source, settings, tree_dir
        self.models = reward_models(source)
        self.encoder = self.models[0].encoder if self.models else None
        self.splitter = ConversationSplitter(self.encoder) if self.encoder else None
        self.batcher = DynamicBatcher(source, settings.max_batch_tokens, settings.max_wait_ms, settings.max_queue, settings.batch_size)

    def size_of(self, prompts: list, responses: list[str]) -> tuple[int, int]:
        """(tokens, rows cut to max_length) by the first model's encoder, or a character estimate."""
        if len(responses) > self.settings.max_items:
            raise HTTPException(413, f"{len(responses)} rows in one request; the limit is {self.settings.max_items}")
        if self.encoder is None:
            return sum(len(str(p)) + len(r) for p, r in zip(prompts, responses)) // CHARS_PER_TOKEN + 1, 0
        tokens = cut = 0
        for prompt, response in zip(prompts, responses):
            (encoded,), truncated = self.encoder.encode(as_messages(prompt), [response])
            tokens, cut = tokens + len(encoded), cut + truncated
        return tokens, cut

    async def scored(self, prompts: list, responses: list[str]) -> RewardScores:
        """The rows' scores. The request is sized (and so checked) on a worker thread before it joins a
        batch; a failure is this request's alone (see DynamicBatcher) and its message shows no paths or secrets."""
        try:
            tokens, cut = await asyncio.to_thread(self.size_of, prompts, responses)
            scores = await self.batcher.score(prompts, responses, tokens, cut)
        except asyncio.QueueFull:
            raise HTTPException(503, "the server is busy: too many requests waiting", headers={"Retry-After": str(self.settings.retry_after_s)}) from None
        except UserError as err:
            raise HTTPException(422, public_text(str(err), self.tree_dir)) from None
        bad = np.flatnonzero(~np.isfinite(scores.mean))
        if len(bad):
            raise HTTPException(500, f"the reward source gave a non-finite reward ({scores.mean[bad[0]]}) for row {bad[0]}: it is broken")
        return scores

    async def scored_texts(self, texts: list[str], hints: list[str] | None, field: str) -> RewardScores:
        """The scores of full chat-rendered texts (split on a worker thread: it tokenises)."""
        return await self.scored(*await asyncio.to_thread(self.split_texts, texts, hints, field))

    def split_texts(self, texts: list[str], hints: list[str] | None, field: str) -> tuple[list, list[str]]:
        """Prompts and responses of full chat-rendered texts (see conversation.split_texts); 422 if one does not split."""
        try:
            return split_texts(self.splitter, texts, hints, field)
        except ValueError as err:
            raise HTTPException(422, str(err)) from None


def _scoring_routes(app: FastAPI, scorer: _Scorer, secured: list, served_name: str) -> None:
    """POST /v1/score (ours), /get_reward (OpenRLHF's) and /classify (vLLM's, as verl calls it)."""

    @app.post("/v1/score", response_model=ScoreResponse, dependencies=secured)
    async def score(request: ScoreRequest) -> dict:
        """Rewards of (prompt, response) rows, their standard deviations and named parts."""
        return (await scorer.scored(*request.rows())).to_json()

    @app.post("/get_reward", response_model=OpenRLHFResponse, dependencies=secured)
    async def get_reward(request: OpenRLHFRequest) -> dict:
        """OpenRLHF's remote reward model protocol; each query is split into prompt and response by the
        chat template (or at its entry in `prompts`)."""
        if request.prompts is not None and len(request.prompts) != len(request.query):
            raise HTTPException(422, f"`prompts` has {len(request.prompts)} entries but `query` has {len(request.query)}")
        scores = await scorer.scored_texts(request.query, request.prompts, "query")
        extra = {name: values.tolist() for name, values in scores.parts.items()}
        if scores.std is not None:
            extra["reward_std"] = scores.std.tolist()
        return {"rewards": scores.mean.tolist(), "scores": scores.mean.tolist(), "extra_logs": extra}

    @app.post("/classify", response_model=ClassifyResponse, dependencies=secured)
    async def classify(request: ClassifyRequest) -> dict:
        """vLLM's classify API, as verl's reward loop calls a discriminative reward model: each input is a
        conversation rendered with the chat template; `probs` holds σ(reward), or the reward itself with
        `"activation": false` (or newer vLLM's `"use_activation": false`)."""
        scores = await scorer.scored_texts([request.input] if isinstance(request.input, str) else request.input, None, "input")
        raw = request.activation is False or request.use_activation is False
        values = scores.mean if raw else preference_probability(scores.mean, 0.0)
        return {"id": f"classify-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()), "model": request.model or served_name,
                "data": [{"index": i, "label": "reward", "probs": [float(v)], "num_classes": 1} for i, v in enumerate(values)]}


def _feedback_route(app: FastAPI, scorer: _Scorer, secured: list) -> None:
    """POST /v1/feedback: teach a bandit source which member suits which prompts."""
    source = scorer.source

    @app.post("/v1/feedback", response_model=FeedbackResponse, dependencies=secured)
    async def feedback(request: FeedbackRequest) -> dict:
        """Teach a bandit source which member suits which prompts; its state is saved after each request
        when the tree names a `state` file, so it keeps learning across restarts."""
        if not isinstance(source, BanditSelector):
            raise HTTPException(404, "this server's source is not a bandit (`kind: bandit` at the top of the tree); it takes no feedback")
        arms = []
        for i, item in enumerate(request.items):
            if isinstance(item.arm, str) and item.arm not in source.names:
                raise HTTPException(422, f"items[{i}].arm: no member {item.arm!r}; members: {', '.join(source.names)}")
            if isinstance(item.arm, int) and not 0 <= item.arm < len(source.names):
                raise HTTPException(422, f"items[{i}].arm: {item.arm} is not a member index (0 to {len(source.names) - 1})")
            arms.append(source.names.index(item.arm) if isinstance(item.arm, str) else item.arm)

        def learn() -> dict:
            batches = [[_plain(p) for p in (item.prompts or [item.prompt])] for item in request.items]
            rewards = [source.feedback(context, arm, item.feedback, batch[0] if item.prompt else None)
                       for item, arm, batch, context in zip(request.items, arms, batches, source.batch_contexts(batches))]
            saved = None
            if source.state_path:
                saved = public_text(str(source.save().resolve()), scorer.tree_dir)
            source.log.clear()  # with no state file there is nowhere to keep it: a long-running server does not grow it
            return {"rewards": rewards, "steps": source.steps, "saved": saved}

        return await scorer.batcher.call(learn)


class BodyLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413, whether announced by Content-Length or not."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, send)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        await self.app(scope, _replay([{"type": "http.request", "body": body, "more_body": False}], receive), send)

    async def _refuse(self, scope, send) -> None:
        await JSONResponse({"detail": f"request body over the limit of {self.max_bytes} bytes"}, status_code=413)(scope, None, send)


def _replay(messages: list[dict], then=None):
    """A `receive` that hands out `messages`, then defers to `then` (disconnects) or repeats the last."""
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        if then is not None:
            return await then()
        return messages[-1]

    return receive


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each bad field and why, without echoing the values (they may be huge, private, or NaN,
    which JSON cannot carry)."""
    detail = [{"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")} for error in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)
PATH_KEYS = ("path", "answers", "state")


def public_text(text: str, tree_dir: Path) -> str:
    """`text` fit for clients: URLs redacted (credentials, secret query values) and paths inside the
    served tree's folder shown relative to it."""
    text = URL.sub(lambda match: redact_url(match.group(0)), text)
    for folder in {str(tree_dir.resolve()), str(tree_dir)} - {"."}:
        text = text.replace(folder.rstrip("/") + "/", "")
    return text


def _public_tree(node, tree_dir: Path):
    """The tree for /v1/info: remote URLs redacted, absolute paths inside its folder made relative, others
    by their name alone."""
    if isinstance(node, list):
        return [_public_tree(child, tree_dir) for child in node]
    if not isinstance(node, dict):
        return node if isinstance(node, (str, int, float, bool)) or node is None else str(node)
    shown = {}
    for key, value in node.items():
        if key == "url" and isinstance(value, str):
            value = redact_url(value)
        elif key in PATH_KEYS and isinstance(value, str) and Path(value).is_absolute():
            inside = Path(value).resolve().is_relative_to(tree_dir.resolve())
            value = str(Path(value).resolve().relative_to(tree_dir.resolve())) if inside else Path(value).name
        shown[key] = _public_tree(value, tree_dir)
    return shown


def describe(spec: str) -> dict:
    """/v1/info's view of a served source: its name and, for a YAML tree, the tree itself (see
    _public_tree); `folder` (where the tree's paths start) is kept for messages, not shown."""
    path = Path(spec)
    if path.is_file():
        return {"reward": path.name, "tree": _public_tree(read_tree(path), path.parent), "folder": str(path.parent)}
    shown = path.name if path.is_dir() else str(spec)  # a model folder by its name; a Hub id as it is
    return {"reward": shown, "tree": {"kind": "model", "path": shown}, "folder": str(path.parent)}
