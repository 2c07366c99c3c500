import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rewardstack.config import ComputeConfig, TrainConfig
from rewardstack.data.encode import encode_pairs
from rewardstack.data.load import Columns, PreferencePair
from rewardstack.evaluation import evaluate_encoded
from rewardstack.losses import bradley_terry_loss, policy_loss
from rewardstack.metrics import pairwise_metrics
from rewardstack.model import RewardModel
from rewardstack.synthetic import arithmetic_pairs, write_jsonl
from rewardstack.training import collate_pairs, objective_losses, reference_logprobs, train


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_policy_losses_by_hand():
    c, r, ref_c, ref_r = (torch.tensor([v]) for v in (-5.0, -7.0, -6.0, -6.0))  # h = 1 − (−1) = 2
    assert policy_loss(c, r, ref_c, ref_r, 0.1, "sigmoid").item() == pytest.approx(-math.log(sig(0.2)))
    assert policy_loss(c, r, ref_c, ref_r, 0.1, "ipo").item() == pytest.approx((2 - 5) ** 2)
    assert policy_loss(c, r, ref_c, ref_r, 0.1, "hinge").item() == pytest.approx(0.8)
    # simpo: β·(−5/5 − (−7/7)) − γ = −0.5, no reference needed
    simpo = policy_loss(c, r, None, None, 0.1, "simpo", torch.tensor([5.0]), torch.tensor([7.0]), simpo_gamma=0.5)
    assert simpo.item() == pytest.approx(-math.log(sig(-0.5)))
    with pytest.raises(ValueError, match="needs reference"):
        policy_loss(c, r, None, None, 0.1, "sigmoid")


def config(**overrides) -> TrainConfig:
    values = dict(model="tiny-random", max_length=256, lora_r=4, objective="haf", batch_size=4, micro_batch_size=4,
                  learning_rate=5e-3, warmup_ratio=0.0, seed=3, eval_batch_size=4, columns=Columns())
    return TrainConfig(**{**values, **overrides})


def perturbed_model(cfg: TrainConfig) -> RewardModel:
    model = RewardModel.create(cfg)
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.normal_(0, 0.2)
    return model


def pairs_of(n=4):
    rows = arithmetic_pairs(n, seed=7)
    return [PreferencePair(({"role": "user", "content": r["prompt"]},), r["chosen"], r["rejected"]) for r in rows]


def test_response_logprobs_sum_response_tokens_only_in_any_chunking():
    model = perturbed_model(config())
    data = encode_pairs(model.encoder, pairs_of(3))
    packed = collate_pairs(data, [0, 1, 2], model.tokenizer.pad_token_id, ComputeConfig()).packed
    with torch.no_grad():
        hidden = model.decoder(input_ids=packed.input_ids, attention_mask=packed.attention_mask("sdpa"), position_ids=packed.position_ids).last_hidden_state
        chunked = model.response_logprobs(hidden.flatten(0, 1), packed, chunk_size=7)
        whole = model.response_logprobs(hidden.flatten(0, 1), packed, chunk_size=10**6)
        for k, sequence in enumerate(data.chosen + data.rejected):
            logits = model.backbone(input_ids=torch.tensor([sequence.ids])).logits[0].log_softmax(-1)
            start = len(sequence.prompt_ids)
            manual = sum(logits[t - 1, sequence.ids[t]].item() for t in range(start, len(sequence)))
            assert chunked[k].item() == pytest.approx(manual, abs=1e-4)
    torch.testing.assert_close(chunked, whole)


def test_alpha_zero_is_exactly_bt_and_lambda_zero_is_exactly_dpo():
    cfg = config()
    model = perturbed_model(cfg)
    data = encode_pairs(model.encoder, pairs_of(4))
    reference = reference_logprobs(model, data, cfg) - 0.3  # any reference will do for the identities
    batch = collate_pairs(data, [0, 1, 2, 3], model.tokenizer.pad_token_id, ComputeConfig())
    batch.margin = torch.tensor([0.5, -0.2, 1.0, 0.0])  # identities checked away from the defaults: margins and centring on
    extra = dict(center_rewards_coefficient=0.3, beta=0.3)

    def loss_and_grads(c):
        model.zero_grad()
        loss = objective_losses(model, batch, c, reference).mean()
        loss.backward()
        return loss.detach(), [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]

    # (the head's gradient under dpo is None, under λ = 0 exactly zero: both compare as zeros)
    for mixed, pure in ((config(policy_weight=0.0, **extra), config(objective="bt", **extra)),
                        (config(reward_weight=0.0, policy_weight=1.0, **extra), config(objective="dpo", **extra))):
        loss_a, grads_a = loss_and_grads(mixed)
        loss_b, grads_b = loss_and_grads(pure)
        assert torch.equal(loss_a, loss_b)
        for a, b in zip(grads_a, grads_b):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    # haf = λ·BT(margin, centring) + α·policy(β), with every coefficient away from its default
    rewards, logps = model(batch.packed, logprobs=True)
    mixed = config(reward_weight=0.7, policy_weight=0.4, **extra)
    expected = 0.7 * bradley_terry_loss(rewards[:4], rewards[4:], batch.margin, 0.3) + 0.4 * policy_loss(
        logps[:4], logps[4:], reference[:, 0], reference[:, 1], 0.3)
    torch.testing.assert_close(objective_losses(model, batch, mixed, reference), expected)
    without_margin = 0.7 * bradley_terry_loss(rewards[:4], rewards[4:], torch.zeros(4), 0.3) + 0.4 * policy_loss(
        logps[:4], logps[4:], reference[:, 0], reference[:, 1], 0.3)
    assert (expected - without_margin).abs().max() > 1e-3  # the margin changes the loss, so dropping it would be seen


def test_cached_reference_equals_on_the_fly_and_the_adapter_disabled_model(tmp_path):
    cfg = config(ref_cache_dir=str(tmp_path / "refs"))
    model = RewardModel.create(cfg)  # fresh LoRA: the identity, so this model is the reference
    data = encode_pairs(model.encoder, pairs_of(4))
    computed = reference_logprobs(model, data, cfg)
    assert len(list((tmp_path / "refs").iterdir())) == 1
    with torch.no_grad():  # train-like change of the adapter: the cache must not move
        for p in model.trainable_parameters().values():
            p.add_(0.1)
    cached = reference_logprobs(model, data, cfg)
    torch.testing.assert_close(cached, computed)
    adapter_off = model.logprobs(data.chosen + data.rejected, reference=True)
    np.testing.assert_allclose(adapter_off, np.concatenate([computed[:, 0], computed[:, 1]]), atol=1e-4)
    assert not np.allclose(model.logprobs(data.chosen + data.rejected), adapter_off, atol=1e-3)


def test_haf_and_dpo_train_end_to_end_and_report_both_rewards(tmp_path):
    train_file = write_jsonl(arithmetic_pairs(12, seed=0), tmp_path / "train.jsonl")
    test_file = write_jsonl(arithmetic_pairs(6, seed=1), tmp_path / "test.jsonl")
    _, summary = train(config(), str(train_file), output_dir=tmp_path / "haf", eval_data=[str(test_file)])
    metrics = summary["eval"][str(test_file)]
    assert metrics["pairs"] == metrics["implicit_reward"]["pairs"] == 6

    train(config(objective="dpo"), str(train_file), output_dir=tmp_path / "dpo")
    dpo = RewardModel.from_pretrained(tmp_path / "dpo" / "model")
    rows = arithmetic_pairs(6, seed=1)
    scores = dpo.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]).mean
    encoded = [dpo.encoder.encode(({"role": "user", "content": r["prompt"]},), [r["chosen"]])[0][0] for r in rows]
    logps, ref = dpo.logprobs(encoded), dpo.logprobs(encoded, reference=True)
    np.testing.assert_allclose(scores, 0.1 * (logps - ref), atol=1e-6)
    assert np.abs(scores).max() > 0
    assert "implicit_reward" not in evaluate_encoded(dpo, encode_pairs(dpo.encoder, pairs_of(3)))


def test_one_pass_head_rewards_and_logprobs_equal_separate_passes():
    model = perturbed_model(config())
    data = encode_pairs(model.encoder, pairs_of(3))
    sequences = data.chosen + data.rejected
    rewards, logps = model.head_rewards_and_logprobs(sequences, batch_size=2)
    np.testing.assert_allclose(rewards, model.rewards(sequences, batch_size=3), atol=1e-5)
    np.testing.assert_allclose(logps, model.logprobs(sequences, batch_size=3), atol=1e-4)
    np.testing.assert_allclose(model.implicit_rewards(sequences, logps=logps), model.implicit_rewards(sequences), atol=1e-5)


def test_eval_reads_reference_logprobs_from_the_cache(tmp_path):
    model = perturbed_model(config())
    data = encode_pairs(model.encoder, pairs_of(3))
    plain = evaluate_encoded(model, data)
    assert evaluate_encoded(model, data, ref_cache_dir=str(tmp_path)) == plain
    (cache,) = tmp_path.iterdir()
    sequences = data.chosen + data.rejected
    np.testing.assert_allclose(load_file(cache)["logps"].numpy(), model.logprobs(sequences, reference=True), atol=1e-6)
    save_file({"logps": torch.zeros(len(sequences), dtype=torch.float64)}, cache)  # a planted cache is what eval uses
    logps = model.logprobs(sequences)
    implicit = 0.1 * logps
    expected = pairwise_metrics(implicit[:3], implicit[3:])
    assert evaluate_encoded(model, data, ref_cache_dir=str(tmp_path))["implicit_reward"] == pytest.approx(expected)
