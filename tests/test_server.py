"""The reward server on a real uvicorn, on a loopback port."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import uvicorn
import yaml

from rewardstack.data.encode import as_messages
from rewardstack.model import ModelConfig, RewardModel
from rewardstack.server import ServeConfig, create_app
from rewardstack.server.conversation import ConversationSplitter
from rewardstack.sources import RewardScores, Remote, load_source

PROMPTS = ["What is 2 + 2?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], "Say hi."]
RESPONSES = ["4", "Blue, the colour of the sky on a clear day.", "Hello there!"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("served") / "model"
    created = RewardModel.create(ModelConfig(model="tiny-random", max_length=256, lora_r=2))
    torch.manual_seed(0)
    torch.nn.init.normal_(created.head.weight, std=1.0)  # rewards that differ per row: routing and order can be checked
    created.save(directory)
    return RewardModel.from_pretrained(directory)


@contextmanager
def running(source, description=None, api_key=None, **settings):
    """A uvicorn server for `source` in a thread; yields (base URL, uvicorn.Server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(source, ServeConfig(**settings), description, api_key)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=10))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(10)


def call(url, body=None, headers=None, raw: bytes | None = None):
    """(status, JSON answer, headers) of a GET (no body) or POST."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read()), answer.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


class Slow:
    """A source that takes `seconds` per call; reward = response length. `started` is set when a call begins."""

    def __init__(self, seconds: float):
        self.seconds, self.started = seconds, threading.Event()

    def score(self, prompts, responses, batch_size=16):
        self.started.set()
        time.sleep(self.seconds)
        return RewardScores(mean=np.array([float(len(r)) for r in responses]))


def test_scores_equal_the_model_in_both_request_forms(model):
    expected = model.score(PROMPTS, RESPONSES).mean
    assert np.ptp(expected) > 0.1
    with running(model) as (url, _):
        status, answer, _ = call(url + "/v1/score", {"items": [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]})
        assert status == 200 and answer["std"] is None and answer["parts"] == {} and answer["truncated"] == 0
        assert answer["rewards"] == pytest.approx(expected.tolist(), abs=1e-5)
        status, answer, _ = call(url + "/v1/score", {"prompt": PROMPTS[0], "responses": RESPONSES})
        assert answer["rewards"] == pytest.approx(model.score([PROMPTS[0]] * 3, RESPONSES).mean.tolist(), abs=1e-5)
        assert Remote(url, batch_size=2).score(PROMPTS, RESPONSES).mean == pytest.approx(expected, abs=1e-5)
        long = "word " * 100  # cut to the model's 256 tokens, and counted
        assert call(url + "/v1/score", {"prompt": "p", "responses": [long, "short"]})[1]["truncated"] == 1
        status, info, _ = call(url + "/v1/info")
        assert info["models"] == [{"base_model": "tiny-random", "objective": "bt", "max_length": 256, "posterior": False}]
        assert info["stats"]["rows"] == 3 + 3 + 3 + 2 and info["stats"]["truncated"] == 1
        assert call(url + "/health")[1] == {"status": "ok"}
        assert "/get_reward" in call(url + "/openapi.json")[1]["paths"]


def test_openrlhf_protocol_splits_queries_by_the_chat_template(model):
    rendered = [model.encoder.render(as_messages(p), r) for p, r in zip(PROMPTS, RESPONSES)]
    queries = [prompt + response + "<|im_end|>" * 3 for prompt, response in rendered]  # as a padded batch decodes
    expected = model.score(PROMPTS, RESPONSES).mean
    with running(model) as (url, _):
        status, answer, _ = call(url + "/get_reward", {"query": queries, "labels": ["a", "b", "c"]})
        assert status == 200 and answer["rewards"] == pytest.approx(expected.tolist(), abs=1e-5) and answer["scores"] == answer["rewards"]
        hinted = call(url + "/get_reward", {"query": queries, "prompts": [prompt for prompt, _ in rendered]})[1]
        assert hinted["rewards"] == pytest.approx(expected.tolist(), abs=1e-5)
        ours = Remote(url, protocol="openrlhf").score(["Say hi."], ["Hello there!"])  # plain text + newline + response
        assert ours.mean == pytest.approx(model.score(["Say hi."], ["Hello there!"]).mean, abs=1e-5)
        status, answer, _ = call(url + "/get_reward", {"query": ["no template here"]})
        assert status == 422 and "query[0]" in answer["detail"] and "assistant turn marker" in answer["detail"]


def test_conversation_splitter_recovers_messages_and_response(model):
    splitter = ConversationSplitter(model.encoder)
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "a\nb"}, {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
    prompt, response = model.encoder.render(messages, "the reply\n")
    assert splitter.split(prompt + response + "<|im_end|>") == (messages, "the reply\n")
    assert splitter.split("Question?\nAnswer", prompt="Question?\n") == ([{"role": "user", "content": "Question?"}], "Answer")
    with pytest.raises(ValueError, match="does not follow the chat template"):
        splitter.split("no header<|im_end|>\n<|im_start|>assistant\nx")


def test_api_key_limits_and_malformed_input(model):
    item = {"prompt": "p", "response": "r"}
    with running(model, api_key="s3cret", max_items=3, max_body_mb=2000 / 2**20) as (url, _):
        assert call(url + "/v1/score", {"items": [item]})[0] == 401
        status, _, headers = call(url + "/v1/score", {"items": [item]}, {"Authorization": "Bearer wrong"})
        assert status == 401 and headers["WWW-Authenticate"] == "Bearer"
        key = {"Authorization": "Bearer s3cret"}
        assert call(url + "/v1/score", {"items": [item]}, key)[0] == 200
        assert call(url + "/health")[0] == 200  # liveness needs no key
        assert call(url + "/v1/info")[0] == 401
        status, answer, _ = call(url + "/v1/score", {"items": [item] * 4}, key)
        assert status == 413 and "limit is 3" in answer["detail"]
        status, answer, _ = call(url + "/v1/score", {"prompt": "p", "responses": ["x" * 3000]}, key)
        assert status == 413 and "2000 bytes" in answer["detail"]
        status, answer, _ = call(url + "/v1/score", {"items": [{"prompt": "p"}]}, key)
        assert status == 422 and answer["detail"][0]["loc"] == ["body", "items", 0, "response"]
        status, answer, _ = call(url + "/v1/score", {"prompt": "p"}, key)
        assert status == 422 and "either `items` or both" in json.dumps(answer)
        assert call(url + "/v1/score", raw=b"{not json", headers=key)[0] == 422
        status, answer, _ = call(url + "/get_reward", {"query": ["a", "b"], "prompts": ["a"]}, key)
        assert status == 422 and "`prompts` has 1 entries" in answer["detail"]


def test_full_queue_answers_503_with_retry_after():
    source = Slow(0.5)
    with running(source, max_queue=1, max_wait_ms=0) as (url, _):
        answers = [None] * 4

        def ask(i):
            answers[i] = call(url + "/v1/score", {"prompt": "p", "responses": ["x" * (i + 1)]})

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        refused = call(url + "/v1/info")[1]["stats"]["refused"]
    statuses = [a[0] for a in answers]
    assert 503 in statuses and 200 in statuses and set(statuses) <= {200, 503}
    assert refused == statuses.count(503)  # each refusal counted once
    assert all(a[2]["Retry-After"] == "1" for a in answers if a[0] == 503)
    assert all(a[1]["rewards"] == [float(i + 1)] for i, a in enumerate(answers) if a[0] == 200)


def test_concurrent_clients_get_their_own_rows_batched_together(model):
    requests = [[f"client {c} answer {k} " + "x" * (3 * c + k) for k in range(3)] for c in range(8)]
    expected = [model.score(["Q?"] * 3, rows).mean for rows in requests]
    answers = [None] * len(requests)
    with running(model, max_wait_ms=50) as (url, _):
        def ask(c):
            answers[c] = call(url + "/v1/score", {"prompt": "Q?", "responses": requests[c]})[1]["rewards"]

        threads = [threading.Thread(target=ask, args=(c,)) for c in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = call(url + "/v1/info")[1]["stats"]
    for got, want in zip(answers, expected):
        assert got == pytest.approx(want.tolist(), abs=1e-5)
    assert stats["requests"] == 8 and stats["largest_batch_requests"] > 1 and stats["batches"] < 8


def test_shutdown_finishes_in_flight_requests():
    source = Slow(1.0)
    answer = {}
    with running(source) as (url, server):
        thread = threading.Thread(target=lambda: answer.update(result=call(url + "/v1/score", {"prompt": "p", "responses": ["abc"]})))
        thread.start()
        assert source.started.wait(10)
        server.should_exit = True  # what SIGTERM does
        thread.join(10)
    assert answer["result"][0] == 200 and answer["result"][1]["rewards"] == [3.0]


def test_serve_command_end_to_end(model, tmp_path):
    directory = tmp_path / "m"
    model.save(directory)
    env = {key: value for key, value in os.environ.items() if key != "REWARDSTACK_API_KEY"}
    refused = subprocess.run([sys.executable, "-m", "rewardstack.cli", "serve", "--reward", str(directory), "--host", "0.0.0.0"],
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "needs an API key" in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "rewardstack.cli", "serve", "--reward", str(directory), "--port", str(port)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if call(url + "/health")[0] == 200:
                    break
            except urllib.error.URLError:
                time.sleep(0.1)
        status, answer, _ = call(url + "/v1/score", {"prompt": PROMPTS[0], "responses": RESPONSES})
        assert status == 200 and answer["rewards"] == pytest.approx(model.score([PROMPTS[0]] * 3, RESPONSES).mean.tolist(), abs=1e-5)
        assert call(url + "/v1/info")[1]["tree"] == {"kind": "model", "path": directory.name}  # no absolute paths shown to clients
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    # uvicorn shuts down cleanly, then re-raises the signal so the exit status says what stopped it
    assert process.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output[-2000:]


def test_a_composite_source_serves_its_parts_and_lists_its_models(model):
    from rewardstack.sources import Ensemble, Rule
    from rewardstack.sources.rules import length_rule

    source = Ensemble({"rm": model, "words": Rule(length_rule("words"), "length")})
    expected = source.score(PROMPTS, RESPONSES)
    with running(source) as (url, _):
        answer = call(url + "/v1/score", {"items": [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)]})[1]
        info = call(url + "/v1/info")[1]
    assert answer["parts"]["words"] == [1.0, 10.0, 2.0]
    assert answer["parts"]["rm"] == pytest.approx(expected.parts["rm"].tolist(), abs=1e-5)
    assert answer["rewards"] == pytest.approx(expected.mean.tolist(), abs=1e-5)
    assert [m["base_model"] for m in info["models"]] == ["tiny-random"]


def test_a_served_bandit_learns_from_feedback_and_keeps_its_state_across_restarts(tmp_path):
    import yaml

    from rewardstack.sources import load_source

    tree = {"kind": "bandit", "algorithm": "linucb", "params": {"alpha": 0.0}, "context": {"kind": "words", "dim": 8},
            "state": "state/bandit.safetensors",
            "members": [{"name": "long", "source": {"kind": "rule", "builtin": "length"}},
                        {"name": "short", "source": {"kind": "rule", "builtin": "regex", "pattern": "^.{0,3}$"}}]}
    (tmp_path / "bandit.yaml").write_text(yaml.safe_dump(tree))
    items = [{"prompt": "math one", "arm": "long", "feedback": 1.0}, {"prompt": "math one", "arm": 1, "feedback": 0.0},
             {"prompt": [{"role": "user", "content": "chat"}], "arm": "short", "feedback": 3.0},
             {"prompts": ["chat", "chat again"], "arm": 0, "feedback": 2.0}]
    expected = load_source(tmp_path / "bandit.yaml")
    for item, arm in zip(items, [0, 1, 1, 0]):
        prompts = item.get("prompts") or [item["prompt"]]
        expected.feedback(expected.context.encode(prompts).mean(axis=0), arm, item["feedback"])
    with running(load_source(tmp_path / "bandit.yaml")) as (url, _):
        status, answer, _ = call(url + "/v1/feedback", {"items": items})
        assert status == 200 and answer["steps"] == 4 and answer["saved"] == str(tmp_path / "state" / "bandit.safetensors")
        # running q20, q80 of the feedback so far: (2 − 0.6) / (2.4 − 0.6) for the last
        assert answer["rewards"] == pytest.approx([0.5, 0.0, 1.0, 7 / 9])
        assert call(url + "/v1/info")[1]["bandit"] == {"members": ["long", "short"], "steps": 4, "arm_counts": {"long": 2, "short": 2}}
        for bad, message in (({"prompt": "p", "arm": "medium", "feedback": 1}, "no member 'medium'; members: long, short"),
                             ({"prompt": "p", "arm": 2, "feedback": 1}, "2 is not a member index (0 to 1)")):
            status, answer, _ = call(url + "/v1/feedback", {"items": [bad]})
            assert status == 422 and answer["detail"] == f"items[0].arm: {message}"
        status, answer, _ = call(url + "/v1/feedback", {"items": [{"prompt": "p", "prompts": ["p"], "arm": 0, "feedback": 1}]})
        assert status == 422 and "either `prompt` or `prompts`" in json.dumps(answer)
    restarted = load_source(tmp_path / "bandit.yaml")  # a new server process loads the saved state
    assert restarted.steps == 4 and restarted.bandit.A_inv == pytest.approx(expected.bandit.A_inv)
    assert restarted.normalizer.history.tolist() == [1.0, 0.0, 3.0, 2.0]
    log = [json.loads(line) for line in (tmp_path / "state" / "bandit_log.jsonl").read_text().splitlines()]
    assert [(e["step"], e["arm"], e["feedback"]) for e in log] == [(0, "long", 1.0), (1, "short", 0.0), (2, "short", 3.0), (3, "long", 2.0)]
    assert log[0]["context_id"] == log[1]["context_id"] != log[2]["context_id"] and log[3]["context_id"] is None  # a batch has no one prompt


def test_feedback_needs_a_bandit(model):
    with running(model) as (url, _):
        status, answer, _ = call(url + "/v1/feedback", {"items": [{"prompt": "p", "arm": 0, "feedback": 1.0}]})
    assert status == 404 and "not a bandit" in answer["detail"]


def test_vllm_classify_shape_as_verl_sends_it(model, tmp_path):
    """verl's reward loop posts conversations rendered with the chat template to /classify with
    "activation": false and reads data[i].probs[0]: the reward; with activation on, σ(reward)."""
    rendered = [model.encoder.render(as_messages(p), r) for p, r in zip(PROMPTS, RESPONSES)]
    texts = [prompt + response for prompt, response in rendered]
    expected = model.score(PROMPTS, RESPONSES).mean
    with running(model) as (url, _):
        body = {"model": "rm", "input": texts, "activation": False, "add_special_tokens": False}
        status, answer, _ = call(url + "/classify", body)
        assert status == 200 and answer["object"] == "list" and answer["model"] == "rm"
        assert [d["index"] for d in answer["data"]] == [0, 1, 2] and {d["num_classes"] for d in answer["data"]} == {1}
        assert [d["probs"][0] for d in answer["data"]] == pytest.approx(expected.tolist(), abs=1e-5)
        single = call(url + "/classify", {"input": texts[1]})[1]["data"]
        assert len(single) == 1 and single[0]["probs"][0] == pytest.approx(1 / (1 + np.exp(-expected[1])), abs=1e-6)
        assert call(url + "/classify", {"input": texts, "use_activation": False})[1]["data"][2]["probs"][0] == pytest.approx(expected[2], abs=1e-5)
        status, answer, _ = call(url + "/classify", {"input": ["no template here"]})
        assert status == 422 and answer["detail"].startswith("input[0]:")
        # The classify protocol of a remote source renders by the served model's chat template, as verl does.
        tree = tmp_path / "served.yaml"
        tree.write_text(yaml.safe_dump({"kind": "remote", "url": url, "protocol": "classify", "tokenizer": str(tmp_path / "tok"), "batch_size": 2}))
        model.tokenizer.save_pretrained(tmp_path / "tok")
        assert load_source(tree).score(PROMPTS, RESPONSES).mean == pytest.approx(expected, abs=1e-5)


def test_batcher_groups_by_tokens_carries_the_overflow_and_serialises_calls_with_scoring():
    """DynamicBatcher without HTTP: requests within max_batch_tokens share one score call, the one that
    does not fit opens the next batch; each request gets its own rows and truncation count; `call` runs on
    the one scoring thread after the batch in progress; a failing batch is retried request by request;
    `stop` scores what is queued; the stats count exactly."""
    import asyncio

    from rewardstack.server.batching import DynamicBatcher

    events, calls = [], []

    class Recording:
        def __init__(self):
            self.release = threading.Event()

        def score(self, prompts, responses, batch_size=16):
            calls.append((threading.current_thread().name, list(responses), batch_size))
            events.append("score start")
            self.release.wait(10)
            events.append("score end")
            if "bad" in responses:
                raise ValueError("cannot score 'bad'")
            return RewardScores(mean=np.array([10.0 * len(r) + i for i, r in enumerate(responses)]))

    async def scenario():
        source = Recording()
        batcher = DynamicBatcher(source, max_batch_tokens=10, max_wait_ms=200, batch_size=3)
        batcher.start()
        first = asyncio.ensure_future(batcher.score(["p"], ["a"], tokens=2))
        while not events:  # until the first request, alone after its 200 ms wait, is being scored
            await asyncio.sleep(0.001)
        jobs = [asyncio.ensure_future(batcher.score(["p"] * 2, ["bb", "ccc"], tokens=4, truncated=1)),
                asyncio.ensure_future(batcher.score(["p"], ["dddd"], tokens=4)),
                asyncio.ensure_future(batcher.score(["p"], ["e"], tokens=4))]  # 4 + 4 + 4 > 10: carried to a third batch
        await asyncio.sleep(0.05)
        between = asyncio.ensure_future(batcher.call(lambda: (events.append("call"), threading.current_thread().name)[1]))
        await asyncio.sleep(0.05)
        assert events == ["score start"]  # the call waits for the batch in progress
        source.release.set()
        results = [await first] + [await job for job in jobs]
        thread = await between
        failing = [asyncio.ensure_future(batcher.score(["p"], [text], tokens=1)) for text in ("ok", "bad")]
        await asyncio.sleep(0)
        await batcher.stop()
        return results, thread, failing, batcher.stats

    results, thread, failing, stats = asyncio.run(scenario())
    assert events[:3] == ["score start", "score end", "call"]
    assert [responses for _, responses, _ in calls] == [["a"], ["bb", "ccc", "dddd"], ["e"], ["ok", "bad"], ["ok"], ["bad"]]
    assert {name for name, _, _ in calls} == {thread} and thread.startswith("rewardstack-score") and {b for _, _, b in calls} == {3}
    assert [r.mean.tolist() for r in results] == [[10.0], [20.0, 31.0], [42.0], [10.0]]
    assert [r.truncated for r in results] == [0, 1, 0, 0]
    assert failing[0].result().mean.tolist() == [20.0] and "cannot score 'bad'" in str(failing[1].exception())
    assert (stats.requests, stats.rows, stats.batches, stats.truncated, stats.refused, stats.largest_batch_requests) == (5, 6, 4, 1, 0, 2)


def test_batcher_waits_for_company_scores_a_full_batch_at_once_and_stops_cleanly():
    """The defaults; a request arriving within max_wait_ms joins the batch, a job that fills it exactly
    is taken, and a full batch is scored at once (not at the end of the wait); stop() without start()
    waits for a `call` in progress."""
    import asyncio

    from rewardstack.server.batching import DynamicBatcher

    class Lengths:
        def __init__(self):
            self.calls = []

        def score(self, prompts, responses, batch_size=16):
            self.calls.append(list(responses))
            return RewardScores(mean=np.array([float(len(r)) for r in responses]))

    defaults = DynamicBatcher(Lengths())
    assert (defaults.max_batch_tokens, defaults.max_wait, defaults.queue.maxsize, defaults.batch_size) == (16384, 0.005, 256, 16)

    async def scenario():
        source = Lengths()
        batcher = DynamicBatcher(source, max_batch_tokens=8, max_wait_ms=800)
        batcher.start()
        started = time.perf_counter()
        first = asyncio.ensure_future(batcher.score(["p"], ["a"], tokens=3))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.score(["p"], ["bb"], tokens=5))  # 3 + 5 = 8: fills the batch exactly
        results = await asyncio.gather(first, second)
        waited = time.perf_counter() - started
        await batcher.stop()
        idle, done = DynamicBatcher(source), []
        running = asyncio.ensure_future(idle.call(lambda: (time.sleep(0.3), done.append("call"))))
        await asyncio.sleep(0.05)
        await idle.stop()
        stopped_after_call = list(done)
        await running
        return source.calls, results, waited, stopped_after_call

    calls, results, waited, stopped_after_call = asyncio.run(scenario())
    assert calls == [["a", "bb"]] and [r.mean.tolist() for r in results] == [[1.0], [2.0]]
    assert waited < 0.5  # scored when full, not at the end of its 800 ms wait
    assert stopped_after_call == ["call"]
