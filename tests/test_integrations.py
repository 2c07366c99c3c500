"""Reward sources inside RL frameworks' training loops."""

import numpy as np
import pytest

from rewardstack.integrations import AsyncRewardFunction, RewardFunction
from rewardstack.sources import Rule
from rewardstack.sources.rules import length_rule


def characters():
    return Rule(length_rule("characters"), "length")


def test_reward_function_takes_both_trl_formats_and_marks_what_it_cannot_score():
    reward = RewardFunction(characters(), name="chars")
    assert reward.__name__ == "chars"
    assert reward(prompts=["p", "q"], completions=["abc", "hello"]) == [3.0, 5.0]
    conversational = [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]] * 3
    completions = [[{"role": "assistant", "content": "hey"}], [], [{"role": "assistant", "content": "hello there"}]]
    assert reward(prompts=conversational, completions=completions, answer=["a", "b", "c"]) == [3.0, None, 11.0]


def test_a_grpo_step_calls_the_reward_function_as_trl_does(tmp_path, monkeypatch):
    """One GRPOTrainer step on tiny-random with conversational prompts, a sync and an async reward
    function: every call's rewards are the source's own for exactly the completions TRL sampled, TRL
    awaits the async one, and logs each one's mean."""
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install trl)")
    from datasets import Dataset

    from rewardstack.backbones import tiny_random_backbone

    calls = {"chars": [], "words": []}

    class Recording(RewardFunction):
        def __call__(self, prompts, completions, **columns):
            rewards = super().__call__(prompts, completions, **columns)
            calls[self.__name__].append((prompts, completions, rewards))
            return rewards

    class AsyncRecording(AsyncRewardFunction):
        async def __call__(self, prompts, completions, **columns):
            rewards = await super().__call__(prompts, completions, **columns)
            calls[self.__name__].append((prompts, completions, rewards))
            return rewards

    monkeypatch.chdir(tmp_path)
    policy, tokenizer = tiny_random_backbone()
    policy.save_pretrained("policy")
    tokenizer.save_pretrained("policy")
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(4)])
    args = trl.GRPOConfig(output_dir="out", max_steps=1, per_device_train_batch_size=4, num_generations=2, max_completion_length=12,
                          report_to=[], logging_steps=1, use_cpu=True, bf16=False, save_strategy="no")
    words = AsyncRecording(Rule(length_rule("words"), "words"), name="words")
    trainer = trl.GRPOTrainer(model="policy", reward_funcs=[Recording(characters(), name="chars"), words], args=args, train_dataset=prompts)
    trainer.train()
    for name, count in (("chars", lambda text: len(text)), ("words", lambda text: len(text.split()))):
        assert calls[name]
        returned = []
        for prompts_seen, completions, rewards in calls[name]:
            assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts_seen)
            assert rewards == [float(count(c[0]["content"])) for c in completions]
            returned += rewards
        assert trainer.state.log_history[0][f"rewards/{name}/mean"] == pytest.approx(np.mean(returned), rel=1e-5)
    assert calls["chars"][0][1] == calls["words"][0][1]  # the same completions


def test_openrlhf_reward_func_file_scores_chat_rendered_rollouts(tmp_path, monkeypatch):
    """OpenRLHF calls reward_func(queries, prompts, labels) with template-rendered texts; the file splits
    them by the model's chat template and returns its rewards as float32 tensors."""
    import torch

    from rewardstack.errors import UserError
    from rewardstack.integrations import openrlhf
    from rewardstack.model import ModelConfig, RewardModel

    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=128, lora_r=4))
    torch.manual_seed(0)
    with torch.no_grad():
        model.head.weight.normal_(0, 1.0)
    model.save(tmp_path / "m")
    conversations = [[{"role": "user", "content": "What is 2 + 2?"}], [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]
    responses = ["It is 4.", "Hello there, friend."]
    rendered = [model.encoder.render(c, r) for c, r in zip(conversations, responses)]
    monkeypatch.delenv("REWARDSTACK_REWARD", raising=False)
    with pytest.raises(UserError, match="set \\$REWARDSTACK_REWARD"):
        openrlhf.reward_func(["x"], ["x"], None)
    monkeypatch.setenv("REWARDSTACK_REWARD", str(tmp_path / "m"))
    out = openrlhf.reward_func([p + r for p, r in rendered], [p for p, _ in rendered], ["4", None])
    expected = RewardModel.from_pretrained(tmp_path / "m").score(conversations, responses).mean
    assert out["rewards"].dtype == torch.float32 and torch.equal(out["rewards"], out["scores"])
    np.testing.assert_allclose(out["rewards"].numpy(), expected, atol=1e-5)
    assert abs(expected[0] - expected[1]) > 1e-3
    with pytest.raises(UserError, match=r"queries\[0\]"):
        openrlhf.reward_func(["no template here"], ["something else"], None)
    monkeypatch.setenv("REWARDSTACK_REWARD", "http://127.0.0.1:9/")
    with pytest.raises(UserError, match="get_reward for OpenRLHF"):
        openrlhf.reward_func(["x"], ["x"], None)


def test_verl_compute_score_in_both_forms(tmp_path, monkeypatch):
    """verl calls compute_score per row or batched; the prompt travels in extra_info."""
    import yaml

    from rewardstack.errors import UserError
    from rewardstack.integrations import verl

    (tmp_path / "tree.yaml").write_text(yaml.safe_dump({"kind": "rule", "builtin": "length", "unit": "characters"}))
    monkeypatch.setenv("REWARDSTACK_REWARD", str(tmp_path / "tree.yaml"))
    one = verl.compute_score("gsm8k", "four", "4", {"prompt": "What is 2 + 2?"})
    assert one == 4.0
    infos = [{"prompt": "a"}, {"prompt": [{"role": "user", "content": "b"}]}]
    assert verl.compute_score(data_sources=["x", "y"], solution_strs=["abc", "hello"], ground_truths=[None, None], extra_infos=infos) == [3.0, 5.0]
    with pytest.raises(UserError, match="row 0: extra_info has no `prompt`"):
        verl.compute_score("gsm8k", "four", "4", {"question": "What is 2 + 2?"})
