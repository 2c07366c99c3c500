import numpy as np
import pytest
import torch

from rewardstack.config import ComputeConfig
from rewardstack.data.encode import as_messages
from rewardstack.errors import UserError
from rewardstack.model import ModelConfig, RewardModel

PROMPTS = ["What is 2 + 2?", [{"role": "user", "content": "Name a colour."}], "Say hi.", "Count to three, slowly please."]
RESPONSES = ["4", "Blue, the colour of a clear sky.", "Hi!", "One. Two. Three."]


def make_model(lora_r=4) -> RewardModel:
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=256, lora_r=lora_r))
    torch.manual_seed(1)
    with torch.no_grad():  # move away from the zero initialisation so rewards differ
        for p in model.trainable_parameters().values():
            p.normal_(0, 0.2)
    return model


@pytest.mark.parametrize("lora_r", [4, 0])
def test_save_and_reload_give_same_rewards(tmp_path, lora_r):
    model = make_model(lora_r)
    before = model.score(PROMPTS, RESPONSES).mean
    model.save(tmp_path / "m")
    after = RewardModel.from_pretrained(tmp_path / "m").score(PROMPTS, RESPONSES).mean
    assert np.abs(before).max() > 1e-3
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_rewards_do_not_depend_on_batch_size_or_padding():
    model = make_model()
    one_by_one = np.concatenate([model.score([p], [r], batch_size=1).mean for p, r in zip(PROMPTS, RESPONSES)])
    np.testing.assert_allclose(model.score(PROMPTS, RESPONSES, batch_size=4).mean, one_by_one, atol=1e-5)
    np.testing.assert_allclose(model.score(PROMPTS, RESPONSES, batch_size=3).mean, one_by_one, atol=1e-5)
    # Packed into one row or padded rows, the same; the tokenizer's padding side is unused.
    model.use(ComputeConfig(device="cpu", pack_tokens=10_000))
    np.testing.assert_allclose(model.score(PROMPTS, RESPONSES, batch_size=4).mean, one_by_one, atol=1e-5)
    model.tokenizer.padding_side = "left"
    np.testing.assert_allclose(model.score(PROMPTS, RESPONSES, batch_size=4).mean, one_by_one, atol=1e-5)


def test_responses_to_one_prompt_share_its_forward_pass_with_the_same_rewards(monkeypatch):
    import rewardstack.model

    model = make_model()
    responses = [f"Answer {i}: " + "yes " * i for i in range(10)]  # lengths differ
    prompts = ["Shared prompt?"] * 10 + ["Other prompt"]
    one_by_one = np.concatenate([model.score([p], [r], batch_size=1).mean for p, r in zip(prompts, responses + ["no"])])
    computed = []
    original = rewardstack.model.pack
    monkeypatch.setattr(rewardstack.model, "pack", lambda *a: computed.append(original(*a).computed_tokens) or original(*a))
    np.testing.assert_allclose(model.score(prompts, responses + ["no"], batch_size=4).mean, one_by_one, atol=1e-5)
    shared = sum(computed)
    computed.clear()
    model.use(ComputeConfig(device="cpu", share_prompts=False))
    np.testing.assert_allclose(model.score(prompts, responses + ["no"], batch_size=4).mean, one_by_one, atol=1e-5)
    prompt = len(model.encoder.encode(as_messages("Shared prompt?"), ["x"])[0][0].prompt_ids)
    # Shared: the prompt runs once per forward pass (the ten responses fit in few), not once per response.
    assert sum(computed) - shared >= 6 * prompt


def test_new_head_starts_at_zero_and_lm_head_stays_usable():
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=4))
    assert torch.count_nonzero(model.head.weight) == 0
    ids = torch.tensor([[5, 6, 7]])
    assert model.backbone(input_ids=ids).logits.shape == (1, 3, len(model.tokenizer))


def test_score_rejects_mismatched_lengths_and_reports_truncation():
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=32, lora_r=4))
    with pytest.raises(UserError, match="2 prompts but 1 responses"):
        model.score(["a", "b"], ["x"])
    assert model.score(["short?"], ["x" * 100]).truncated == 1


def test_from_pretrained_names_a_missing_directory(tmp_path):
    with pytest.raises(UserError, match="not a reward model directory"):
        RewardModel.from_pretrained(tmp_path)
