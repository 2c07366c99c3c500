import math

import numpy as np
import torch

from rewardstack.losses import bradley_terry_loss
import pytest

from rewardstack.bayes import probit_logit
from rewardstack.metrics import auroc, expected_calibration_error, logit_metrics, pairwise_metrics, preference_probability


def sig(x):
    return 1 / (1 + math.exp(-x))


def test_bradley_terry_loss_exact():
    rc, rr = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    assert torch.allclose(bradley_terry_loss(rc, rr), torch.tensor([-math.log(sig(1.0)), -math.log(sig(-1.0))]))
    margin = torch.tensor([0.5, 0.0])
    assert torch.allclose(bradley_terry_loss(rc, rr, margin), torch.tensor([-math.log(sig(0.5)), -math.log(sig(-1.0))]))
    centred = bradley_terry_loss(rc, rr, None, center_coefficient=0.01)
    assert torch.allclose(centred, torch.tensor([-math.log(sig(1.0)) + 0.01 * 9, -math.log(sig(-1.0)) + 0.01 * 1]))


def test_pairwise_metrics_by_hand():
    rc, rr = np.array([2.0, 0.0, 1.0, 3.0]), np.array([1.0, 1.0, 1.0, 0.0])
    m = pairwise_metrics(rc, rr)
    deltas = [1.0, -1.0, 0.0, 3.0]
    assert m["accuracy"] == (1 + 0 + 0.5 + 1) / 4
    assert math.isclose(m["mean_margin"], 0.75)
    assert math.isclose(m["brier"], sum((1 - sig(d)) ** 2 for d in deltas) / 4)
    assert math.isclose(m["nll"], sum(-math.log(sig(d)) for d in deltas) / 4)


def test_ece_by_hand():
    # p = 0.75 and 0.95, mirrored to 0.25 and 0.05; bins: [0.0,0.1): 0.05 (y=0), [0.2,0.3): 0.25 (y=0),
    # [0.7,0.8): 0.75 (y=1), [0.9,1.0]: 0.95 (y=1). ECE = (0.05 + 0.25 + 0.25 + 0.05) / 4 = 0.15.
    assert math.isclose(expected_calibration_error(np.array([0.75, 0.95])), 0.15)
    # Two pairs in one bin: p = 0.6, 0.65 with mirrors 0.4, 0.35 → bins [0.6,0.7) and [0.3,0.4).
    assert math.isclose(expected_calibration_error(np.array([0.6, 0.65])), (2 * abs(1 - 0.625) + 2 * abs(0 - 0.375)) / 4)
    # Orientation does not matter.
    assert math.isclose(expected_calibration_error(np.array([0.2, 0.9])), expected_calibration_error(np.array([0.8, 0.1])))


def test_logit_metrics_by_hand():
    m = logit_metrics(np.array([2.0, 0.0, -1.0]))
    assert m["accuracy"] == pytest.approx(0.5)  # 1 + ½ (tie) + 0
    assert m["brier"] == pytest.approx(((1 - sig(2)) ** 2 + 0.25 + (1 - sig(-1)) ** 2) / 3)
    assert m["nll"] == pytest.approx((math.log(1 + math.exp(-2)) + math.log(2) + math.log(1 + math.e)) / 3)


def test_auroc_counts_ties_half():
    # positives beat negatives in 1 (0.4 > 0.1) + 3 (0.8 > all) of 6 comparisons, tie in 2 (0.4 = 0.4)
    assert auroc([0.1, 0.4, 0.4], [0.4, 0.8]) == pytest.approx(5 / 6)
    assert auroc([1.0, 2.0], [3.0]) == 1.0 and auroc([3.0], [1.0, 2.0]) == 0.0


def test_probit_logit_shrinks_by_the_variance():
    # σ(μ / √(1 + π·Var/8)): Var = 8/π halves the squared logit
    assert probit_logit(np.array([2.0]), np.array([8 / math.pi]))[0] == pytest.approx(math.sqrt(2))
    assert probit_logit(np.array([-1.5]), np.array([0.0]))[0] == -1.5


def test_preference_probability_is_stable_for_any_gap():
    import warnings

    from rewardstack.metrics import preference_probability

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow in exp would be a RuntimeWarning
        p = preference_probability(np.array([1000.0, -1000.0, 0.0, 2.0, -745.0]), 0.0)
        metrics = pairwise_metrics(np.array([800.0, -800.0]), np.zeros(2))
    assert p[:3].tolist() == [1.0, 0.0, 0.5] and p[3] == pytest.approx(sig(2.0), rel=1e-15)
    assert p[4] == pytest.approx(math.exp(-745.0), rel=1e-6)
    assert metrics["nll"] == pytest.approx(400.0) and metrics["brier"] == 0.5 and metrics["accuracy"] == 0.5


def test_every_torch_load_refuses_code():
    """torch.load unpickles arbitrary objects unless told weights_only=True: every call in the package says so."""
    import ast
    from pathlib import Path

    import rewardstack

    calls = []
    for path in Path(rewardstack.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                calls.append((path.name, {k.arg: ast.unparse(k.value) for k in node.keywords}.get("weights_only")))
    assert calls and all(flag == "True" for _, flag in calls), calls


def test_ece_with_certain_predictions_and_simpo_reward_by_value():
    """p = 1 and p = 0 for two pairs: both orientations land in the end bins, half right each: ECE = 0.5.
    simpo's implicit reward is β·log π/|y|."""
    from rewardstack.losses import implicit_reward

    assert expected_calibration_error(np.array([1.0, 0.0])) == 0.5
    assert expected_calibration_error(np.array([1.0, 1.0])) == 0.0
    rewards = implicit_reward(torch.tensor([-6.0, -2.0]), None, 0.5, torch.tensor([3.0, 4.0]))
    assert rewards.tolist() == [-1.0, -0.25]


def test_mutation_survivors_in_metrics_and_losses():
    """Bugs bench/mutation.py showed the suite missed: every key of logit_metrics by value, an ECE that
    would average the complement of each bin, auroc with one empty side, the policy losses' defaults and
    half-given arguments."""
    from rewardstack.losses import policy_loss

    assert preference_probability(np.array([2.0]), np.array([1.5]))[0] == pytest.approx(sig(0.5), rel=1e-15)  # σ(r_c − r_r)
    m = logit_metrics(np.array([0.5, 0.0, -1.0]))
    assert set(m) == {"accuracy", "strict_accuracy", "ece", "brier", "nll"}
    assert m["strict_accuracy"] == pytest.approx(1 / 3) and m["accuracy"] == pytest.approx(0.5)  # z = 0.5 > 0, the tie counts 0 / ½
    assert m["ece"] == expected_calibration_error(1 / (1 + np.exp(-np.array([0.5, 0.0, -1.0]))))
    # p = 0.9, 0.6 mirrored to 0.1, 0.4: four bins of one each: (0.1 + 0.4 + 0.1 + 0.4) / 4.
    assert expected_calibration_error(np.array([0.9, 0.6])) == pytest.approx(0.25)
    for empty in (([], [1.0]), ([1.0], [])):
        with pytest.raises(ValueError, match="at least one score of each class"):
            auroc(*empty)
    logps = torch.tensor([-2.0]), torch.tensor([-3.0])
    lengths = torch.tensor([2.0]), torch.tensor([1.0])
    default = policy_loss(*logps, None, None, beta=1.0, kind="simpo", chosen_lengths=lengths[0], rejected_lengths=lengths[1])
    assert default.item() == pytest.approx(math.log(1 + math.exp(-(-1.0 + 3.0 - 0.5))))  # γ = 0.5 by default
    with pytest.raises(ValueError, match="lengths"):
        policy_loss(*logps, None, None, beta=1.0, kind="simpo", chosen_lengths=lengths[0])
    with pytest.raises(ValueError, match="reference"):
        policy_loss(*logps, torch.tensor([-2.5]), None, beta=1.0)
