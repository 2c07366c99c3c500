"""Reward sources inside RL frameworks' training loops."""

import numpy as np
import pytest

from rewardstack.integrations import RewardFunction
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
    """One GRPOTrainer step on tiny-random with conversational prompts: every call's rewards are the
    source's own for exactly the completions TRL sampled, and TRL logs their mean."""
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install trl)")
    from datasets import Dataset

    from rewardstack.backbones import tiny_random_backbone

    calls = []

    class Recording(RewardFunction):
        def __call__(self, prompts, completions, **columns):
            rewards = super().__call__(prompts, completions, **columns)
            calls.append((prompts, completions, rewards))
            return rewards

    monkeypatch.chdir(tmp_path)
    policy, tokenizer = tiny_random_backbone()
    policy.save_pretrained("policy")
    tokenizer.save_pretrained("policy")
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(4)])
    args = trl.GRPOConfig(output_dir="out", max_steps=1, per_device_train_batch_size=4, num_generations=2, max_completion_length=12,
                          report_to=[], logging_steps=1, use_cpu=True, bf16=False, save_strategy="no")
    trainer = trl.GRPOTrainer(model="policy", reward_funcs=[Recording(characters(), name="chars")], args=args, train_dataset=prompts)
    trainer.train()
    assert calls
    returned = []
    for prompts_seen, completions, rewards in calls:
        assert all(isinstance(p, list) and p[-1]["role"] == "user" for p in prompts_seen)
        assert rewards == [float(len(c[0]["content"])) for c in completions]
        returned += rewards
    assert trainer.state.log_history[0]["rewards/chars/mean"] == pytest.approx(np.mean(returned), rel=1e-5)
