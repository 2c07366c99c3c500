"""Packed, prefix-shared forward passes equal running each sequence alone: rewards, log π, losses,
gradients and posterior variances, for any sharing, packing budget, batch size, order and kernel."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from rewardstack.bayes import reward_moments
from rewardstack.bayes.fit import Laplace
from rewardstack.bayes.taps import posterior_layers
from rewardstack.config import ComputeConfig, TrainConfig
from rewardstack.data.encode import Encoded, EncodedPairs
from rewardstack.model import ModelConfig, RewardModel
from rewardstack.packing import common_prefix, pack, plan_batches, plan_rows, prompt_segments, segment_tokens
from rewardstack.training import collate_pairs, objective_losses

PROMPT_A, PROMPT_B, PROMPT_C = (5, 9, 14, 3, 22, 8, 31, 7, 11), (40, 41, 42, 43), (60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71)
R1 = (80, 81, 82, 83, 84)
SEQUENCES = [
    Encoded(PROMPT_A, R1),
    Encoded(PROMPT_B, (90, 91, 92)),
    Encoded(PROMPT_A, R1[:3] + (95, 96, 97, 98)),  # begins like R1
    Encoded(PROMPT_A, R1),  # the same sequence twice
    Encoded(PROMPT_C, (100,)),
    Encoded(PROMPT_A, R1[:2]),  # a prefix of R1
    Encoded(PROMPT_B, (93, 94)),
    Encoded(PROMPT_A, (99,)),
]
COMPUTES = [
    ComputeConfig(),
    ComputeConfig(share_prompts=False),
    ComputeConfig(pack_tokens=12),
    ComputeConfig(pack_tokens=40, attn_implementation="eager"),
    ComputeConfig(share_prompts=False, pack_tokens=1000),
]


def make_model(objective="haf") -> RewardModel:
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=4, objective=objective))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.normal_(0, 0.3)
    return model.eval()


def alone(model: RewardModel, sequence: Encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: reward and log π(y|x) of one sequence run by itself, no mask, no packing."""
    ids = torch.tensor([sequence.ids])
    hidden = model.decoder(input_ids=ids).last_hidden_state[0]
    log_probs = model._base_lm().get_output_embeddings()(hidden[:-1]).log_softmax(-1)
    start = len(sequence.prompt_ids)
    logp = log_probs[start - 1 :].gather(1, ids[0, start:, None]).sum()
    return model.head(hidden[-1]).squeeze(), logp


def test_layout_of_a_shared_prefix_by_hand():
    sequences = [Encoded((1, 2), (3, 4)), Encoded((1, 2), (3, 5, 6)), Encoded((7,), (8,))]
    packed = pack(sequences, [[0, 1], [2]], pad_id=0, row_tokens=0)
    # Row 0: the prefix 1 2 3 once (the responses begin alike), then 4, then 5 6; row 1: 7 8 and padding.
    assert packed.input_ids.tolist() == [[1, 2, 3, 4, 5, 6], [7, 8, 0, 0, 0, 0]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 3, 4], [0, 1, 0, 0, 0, 0]]
    assert packed.part[0].tolist() == [0, 0, 0, 1, 2, 2]
    assert packed.last.tolist() == [3, 5, 7]
    assert packed.tokens.tolist() == [[0, 1, 2, 3, -1], [0, 1, 2, 4, 5], [6, 7, -1, -1, -1]]
    # Response tokens (after each prompt) and the states predicting them.
    assert packed.response_state.tolist() == [1, 2, 1, 2, 4, 6]
    assert packed.response_target.tolist() == [3, 4, 3, 5, 6, 8]
    assert packed.response_owner.tolist() == [0, 0, 1, 1, 1, 2]
    allowed = packed.allowed()
    assert allowed[0, 4].tolist() == [True, True, True, False, True, False]  # 5 sees the prefix and itself, not 4
    assert allowed[0, 3].tolist() == [True, True, True, True, False, False]
    assert allowed[1, 3].tolist() == [False, False, False, True, False, False]  # padding sees itself alone
    assert packed.computed_tokens == 12


def test_planning_helpers():
    assert common_prefix([(1, 2, 3), (1, 2, 4), (1, 2)]) == 2
    assert segment_tokens(SEQUENCES, [0, 2, 3]) == 12 + 2 + 4 + 2  # prompt and R1[:3] once, then each rest
    assert prompt_segments(SEQUENCES) == [[0, 2, 3, 5, 7], [1, 6], [4]]
    assert prompt_segments(SEQUENCES, share_prompts=False) == [[i] for i in range(8)]
    assert plan_rows([5, 9, 3, 4], row_tokens=10) == [[1], [0, 3], [2]]
    assert plan_rows([5, 9, 3], row_tokens=0) == [[1], [0], [2]]
    # A segment over the budget is cut between members; pieces are grouped longest first.
    # Sizes: [0, 2, 3] 20 tokens, then [5, 7] 12 (prompt A once), [4] 13, [1, 6] 9.
    assert plan_batches(SEQUENCES, [[0, 2, 3, 5, 7], [1, 6], [4]], batch_tokens=20) == [[[0, 2, 3]], [[4]], [[5, 7]], [[1, 6]]]
    assert plan_batches(SEQUENCES, [[0, 2, 3, 5, 7], [1, 6], [4]], batch_tokens=25) == [[[0, 2, 3, 5]], [[4], [7]], [[1, 6]]]


@pytest.mark.parametrize("compute", COMPUTES, ids=lambda c: f"share{c.share_prompts}-pack{c.pack_tokens}-{c.attn_implementation}")
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_rewards_and_logprobs_equal_each_sequence_alone(compute, batch_size):
    model = make_model()
    with torch.no_grad():
        expected = np.array([[float(x) for x in alone(model, s)] for s in SEQUENCES])
    model.use(replace(compute, device="cpu"))
    order = np.random.default_rng(batch_size).permutation(len(SEQUENCES))
    rewards, logps = model.head_rewards_and_logprobs([SEQUENCES[i] for i in order], batch_size)
    assert np.abs(expected[:, 0]).max() > 0.1 and len(set(np.round(expected[:, 0], 4))) == 7  # rewards differ (two rows are equal)
    np.testing.assert_allclose(rewards, expected[order, 0], atol=1e-5)
    np.testing.assert_allclose(logps, expected[order, 1], atol=1e-4)
    np.testing.assert_allclose(model.rewards([SEQUENCES[i] for i in order], batch_size), expected[order, 0], atol=1e-5)


def test_packed_pairs_give_the_losses_and_gradients_of_sequences_alone():
    """In float64 (the RMS norms still round to float32), so that any difference beyond rounding shows."""
    model = make_model().double()
    model.train()
    pairs = EncodedPairs([SEQUENCES[0], SEQUENCES[1], SEQUENCES[5]], [SEQUENCES[2], SEQUENCES[6], SEQUENCES[7]], [0.5, 0.0, 1.5], [None] * 3, 0)
    config = TrainConfig(model="tiny-random", objective="haf", center_rewards_coefficient=0.3, policy_weight=0.7, reward_weight=0.4)
    reference = torch.tensor([[-3.0, -4.0], [-2.5, -1.0], [-6.0, -5.5]], dtype=torch.float64)
    params = list(model.trainable_parameters().values())

    def gradients(loss):
        return [g.clone() for g in torch.autograd.grad(loss, params)]

    from rewardstack.losses import bradley_terry_loss, policy_loss

    lengths = torch.tensor([float(len(s.response_ids)) for s in pairs.chosen + pairs.rejected])
    for compute in COMPUTES:
        model.use(replace(compute, device="cpu"))
        outs = [alone(model, s) for s in pairs.chosen + pairs.rejected]  # with the same attention kernel
        r, lp = torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])
        bt = bradley_terry_loss(r[:3], r[3:], torch.tensor([0.5, 0.0, 1.5], dtype=torch.float64), 0.3)
        policy = policy_loss(lp[:3], lp[3:], reference[:, 0], reference[:, 1], config.beta, "sigmoid", lengths[:3], lengths[3:], config.simpo_gamma)
        expected_loss = (0.4 * bt + 0.7 * policy).sum()
        expected = gradients(expected_loss)
        batch = collate_pairs(pairs, [0, 1, 2], model.tokenizer.pad_token_id, compute)
        loss = objective_losses(model, batch, config, reference).sum()
        assert float(loss.detach()) == pytest.approx(float(expected_loss.detach()), abs=1e-7)  # eager rounds its softmax to float32
        for got, want in zip(gradients(loss), expected):  # gradients up to about 10
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients_on_packed_rows():
    pairs = EncodedPairs([SEQUENCES[0], SEQUENCES[1]], [SEQUENCES[2], SEQUENCES[6]], [0.0, 0.0], [None] * 2, 0)
    config = TrainConfig(model="tiny-random", objective="haf", simpo_gamma=0.0, policy_loss="simpo")
    grads, calls = [], []
    for checkpointed in (False, True):
        model = make_model().train()
        if checkpointed:
            model.enable_gradient_checkpointing()
        calls.append(0)
        model.decoder.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.__setitem__(-1, calls[-1] + 1))
        batch = collate_pairs(pairs, [0, 1], model.tokenizer.pad_token_id, ComputeConfig(pack_tokens=64))
        loss = objective_losses(model, batch, config, None).sum()
        grads.append(torch.autograd.grad(loss, list(model.trainable_parameters().values())))
    assert calls == [1, 2]  # checkpointing ran the layer again in the backward pass
    assert max(float(g.abs().max()) for g in grads[0]) > 0.1
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_posterior_variances_and_curvature_do_not_depend_on_packing():
    model = make_model(objective="bt")
    pairs = EncodedPairs([SEQUENCES[0], SEQUENCES[1], SEQUENCES[4]], [SEQUENCES[2], SEQUENCES[6], SEQUENCES[7]], [0.0] * 3, [None] * 3, 0)
    fitted = []
    for compute in (ComputeConfig(), ComputeConfig(pack_tokens=30)):
        model.use(replace(compute, device="cpu"))
        fitted.append(Laplace(model, subset="all", batch_size=2).fit(pairs).posterior)
    for a, b in zip(fitted[0].blocks, fitted[1].blocks):
        for x, y in ((a.out, b.out), (a.inp, b.inp)):
            torch.testing.assert_close(x.vectors @ torch.diag(x.values) @ x.vectors.T, y.vectors @ torch.diag(y.values) @ y.vectors.T,
                                       atol=1e-5, rtol=1e-4)
    for posterior in (fitted[0], Laplace(model, subset="head", batch_size=2).fit(pairs).posterior):
        model.posterior = posterior  # all: one sequence per segment; head: prompts shared
        # The reference: each sequence's own Jacobian by autograd, through the same posterior blocks.
        layers = posterior_layers(model, posterior.subset)
        blocks = {b.name: b for b in posterior.blocks}
        expected = []
        for sequence in SEQUENCES:
            reward, _ = alone(model, sequence)
            grads = torch.autograd.grad(reward, [layer.weight for layer in layers.values()])
            expected.append(sum(float(blocks[name].variances(g[None], torch.tensor([posterior.prior_precision]))[0, 0])
                                for name, g in zip(layers, grads)))
        for compute in COMPUTES:
            model.use(replace(compute, device="cpu"))
            _, var = reward_moments(model, SEQUENCES, batch_size=3)
            np.testing.assert_allclose(var, expected, rtol=1e-4)
    assert min(expected) > 0


def test_compute_options_from_the_cli_and_trl_names(tmp_path):
    import json

    from conftest import cli, write_rows

    from rewardstack.config import from_dict

    model = make_model(objective="bt")
    model.save(tmp_path / "m")
    # Prompts of different lengths: the default pass pads rows, the packed one does not.
    rows = write_rows(tmp_path / "rows.jsonl", [{"prompt": "Prompt " + "word " * i, "response": f"answer {i}" * (i + 1)} for i in range(5)])
    outputs = []
    for flags in ([], ["--device", "cpu", "--no-share-prompts", "--pack-tokens", "1000", "--attn-implementation", "eager"]):
        out = tmp_path / f"scored{len(flags)}.jsonl"
        cli("score", "--reward", tmp_path / "m", "--input", rows, "--output", out, *flags)
        outputs.append([json.loads(line)["reward"] for line in out.read_text().splitlines()])
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    assert len(set(np.round(outputs[0], 4))) == 5
    if not torch.cuda.is_available():
        result = cli("score", "--reward", tmp_path / "m", "--input", rows, "--output", tmp_path / "x.jsonl", "--device", "cuda:1", check_rc=2)
        assert "device cuda:1: no such CUDA device here" in result.stderr
    result = cli("score", "--reward", tmp_path / "m", "--input", rows, "--output", tmp_path / "x.jsonl", "--device", "gpu", check_rc=2)
    assert "device must be auto, cpu, cuda, cuda:N or mps" in result.stderr
    config = from_dict(TrainConfig, {"bf16": True, "attn_implementation": "eager", "model": "tiny-random"}, "trl.yaml")
    assert (config.compute.bf16, config.compute.attn_implementation, config.compute.share_prompts) == (True, "eager", True)


def test_flex_attention_reads_the_block_mask_as_sdpa_does():
    """FlexAttention (the GPU kernel of choice for block masks) also runs on CPU: same rewards."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = make_model(objective="bt")
    with torch.no_grad():
        expected = np.array([float(alone(model, s)[0]) for s in SEQUENCES[:4]])
    model.use(ComputeConfig(device="cpu", attn_implementation="flex_attention", pack_tokens=40))
    np.testing.assert_allclose(model.rewards(SEQUENCES[:4], batch_size=4), expected, atol=1e-5)
