import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch.func import functional_call, jacrev

from rewardstack.bayes import Laplace, fit_laplace, pair_moments
from rewardstack.config import LaplaceConfig
from rewardstack.bayes.fit import FactorSum
from rewardstack.bayes.posterior import PRIOR_GRID, Block, Eigen, Posterior
from rewardstack.bayes.predict import probit_logit
from rewardstack.bayes.taps import posterior_layers
from rewardstack.sources import build_source
from rewardstack.data.encode import Encoded, encode_pairs
from rewardstack.packing import pack
from rewardstack.data.load import Columns, PreferencePair
from rewardstack.errors import UserError
from rewardstack.model import ModelConfig, RewardModel
from rewardstack.synthetic import arithmetic_pairs, write_jsonl

from conftest import cli, cli_in_two_processes, needs_accelerate


def lora_model(objective="bt", lora_r=2) -> RewardModel:
    """Tiny 2-layer model, LoRA on q and v (480 posterior weights with the head), weights perturbed off zero."""
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=lora_r, lora_target_modules="q_proj,v_proj", objective=objective))
    torch.manual_seed(2)
    with torch.no_grad():
        for p in model.trainable_parameters().values():
            p.normal_(0, 0.2)
    return model.eval()


def pairs_of(n, seed=7):
    rows = arithmetic_pairs(n, seed=seed)
    return [PreferencePair(({"role": "user", "content": r["prompt"]},), r["chosen"], r["rejected"]) for r in rows]


class StandInAccelerator:
    """Process `index` of `processes`, played in-process. A sum over the processes adds to each tensor what
    `partner` (the other process, played first) reduced at the same call; without a partner, every process
    is taken to hold the same tensor."""

    def __init__(self, processes=2, index=0, partner=None):
        self.num_processes, self.process_index, self.is_main_process = processes, index, index == 0
        self.device, self.partner, self.reduced = torch.device("cpu"), partner, []

    def reduce(self, tensor, reduction="sum"):
        self.reduced.append(tensor)
        if self.partner is None:
            return tensor * self.num_processes
        return tensor + self.partner.reduced[len(self.reduced) - 1]


class DenseLaplace:
    """Brute force: the full GGN Σ_n λ_n J_Δᵀ J_Δ from torch.func Jacobians of all posterior weights."""

    def __init__(self, model, subset, train):
        layers = posterior_layers(model, subset)
        names = {id(p): n for n, p in model.named_parameters()}
        self.model, self.keys = model, [names[id(layer.weight)] for layer in layers.values()]
        self.shapes = [layer.weight.shape for layer in layers.values()]
        self.theta = torch.cat([layer.weight.detach().flatten() for layer in layers.values()])
        r, jac = self.jacobians(train.chosen + train.rejected)
        n = len(train)
        delta = r[:n] - r[n:]
        lam = torch.sigmoid(delta) * (1 - torch.sigmoid(delta))
        self.ggn = ((jac[:n] - jac[n:]).T * lam) @ (jac[:n] - jac[n:])
        self.log_likelihood = float(torch.nn.functional.logsigmoid(delta).sum())

    def jacobians(self, sequences):
        packed = pack(sequences, [[i] for i in range(len(sequences))], self.model.tokenizer.pad_token_id)

        def rewards(flat):
            params, start = {}, 0
            for key, shape in zip(self.keys, self.shapes):
                params[key] = flat[start : start + shape.numel()].view(shape)
                start += shape.numel()
            return functional_call(self.model, params, (packed,))

        return rewards(self.theta).detach().double(), jacrev(rewards)(self.theta).detach().double()

    def covariance(self, delta):
        return torch.linalg.inv(self.ggn + delta * torch.eye(len(self.theta), dtype=torch.float64))

    def variances(self, pairs, delta):
        """(Var r of chosen then rejected, Var[r_c − r_r])."""
        _, jac = self.jacobians(pairs.chosen + pairs.rejected)
        n, cov = len(pairs), self.covariance(delta)
        quad = lambda j: torch.einsum("sp,pq,sq->s", j, cov, j).numpy()  # noqa: E731
        return quad(jac), quad(jac[:n] - jac[n:])

    def log_evidence(self, delta):
        p = len(self.theta)
        logdet = torch.logdet(self.ggn + delta * torch.eye(p, dtype=torch.float64))
        return self.log_likelihood - 0.5 * delta * float(self.theta.double().square().sum()) + 0.5 * p * math.log(delta) - 0.5 * float(logdet)


def test_head_posterior_is_the_dense_laplace_exactly():
    # One linear layer read at one token: the Kronecker block is exact, so K-FAC = brute force.
    model = lora_model()
    train, test = encode_pairs(model.encoder, pairs_of(16)), encode_pairs(model.encoder, pairs_of(6, seed=3))
    posterior = Laplace(model, subset="head", batch_size=5).fit(train).posterior
    dense = DenseLaplace(model, "head", train)
    for delta in (0.1, 1.0, posterior.prior_precision):
        moments = pair_moments(model, test, batch_size=4, prior_precisions=[delta])
        var_seq, var_delta = dense.variances(test, delta)
        np.testing.assert_allclose(np.concatenate([moments["var_chosen"][:, 0], moments["var_rejected"][:, 0]]), var_seq, rtol=1e-5)
        np.testing.assert_allclose(moments["var_delta"][:, 0], var_delta, rtol=1e-5)
        assert posterior.log_marginal_likelihood(delta) == pytest.approx(dense.log_evidence(delta), rel=1e-6)
    grid = np.logspace(-2, 2, 801)  # grid search on the dense evidence: step 0.005 in log10
    best = grid[np.argmax([dense.log_evidence(d) for d in grid])]
    assert abs(math.log10(posterior.prior_precision / best)) <= 0.005


def test_kfac_posterior_stays_close_to_the_dense_one_with_two_lora_layers():
    # K-FAC drops cross-token terms and Kronecker-factors each block; measured here: std ratio 0.87–1.32,
    # correlation of std 0.90. Tolerance: every std within a factor 2, correlation ≥ 0.8.
    model = lora_model()
    train, test = encode_pairs(model.encoder, pairs_of(64)), encode_pairs(model.encoder, pairs_of(6, seed=3))
    posterior = Laplace(model, batch_size=8).fit(train).posterior
    assert posterior.n_params == 2 * ((2 * 32 + 32 * 2) + (2 * 32 + 16 * 2)) + 32  # 2 layers × (q, v: 16 kv dims) + head
    moments = pair_moments(model, test, batch_size=3)
    var_seq, var_delta = DenseLaplace(model, "all", train).variances(test, posterior.prior_precision)
    std_ratio = np.sqrt(np.concatenate([moments["var_chosen"][:, 0], moments["var_rejected"][:, 0]]) / var_seq)
    assert 0.5 < std_ratio.min() and std_ratio.max() < 2.0
    kfac_std = np.sqrt(np.concatenate([moments["var_chosen"][:, 0], moments["var_rejected"][:, 0]]))
    assert np.corrcoef(kfac_std, np.sqrt(var_seq))[0, 1] >= 0.8
    delta_ratio = np.sqrt(moments["var_delta"][:, 0] / var_delta)
    assert 0.5 < delta_ratio.min() and delta_ratio.max() < 2.0
    # the two rewards of a pair covary (shared prompt): Var[Δ] is far from Var[r_c] + Var[r_r]
    independent = moments["var_chosen"][:, 0] + moments["var_rejected"][:, 0]
    assert np.median(independent / moments["var_delta"][:, 0]) > 2.0


def test_low_rank_factor_variances_equal_the_dense_covariance_they_stand_for():
    torch.manual_seed(0)
    out_dim, in_dim, delta = 3, 6, 0.7

    def truncated(dim, rank):
        q, _ = torch.linalg.qr(torch.randn(dim, dim))
        return Eigen(q[:, :rank], torch.rand(rank) + 0.5, 0.3)

    out, inp = truncated(out_dim, 2), truncated(in_dim, 4)
    dense_factor = lambda e: e.vectors @ torch.diag(e.values) @ e.vectors.T + e.rest * (torch.eye(e.dim) - e.vectors @ e.vectors.T)  # noqa: E731
    cov = torch.linalg.inv(torch.kron(dense_factor(out), dense_factor(inp)).double() + delta * torch.eye(out_dim * in_dim, dtype=torch.float64))
    jac = torch.randn(5, out_dim, in_dim)
    expected = torch.einsum("qp,pr,qr->q", jac.flatten(1).double(), cov, jac.flatten(1).double())
    got = Block("x", out, inp).variances(jac, torch.tensor([delta]))[:, 0]
    torch.testing.assert_close(got, expected)
    groups = Block("x", out, inp).eigenvalue_groups()
    assert sum(m * len(v) for v, m in groups) == out_dim * in_dim
    expected_logdet = torch.logdet(torch.kron(dense_factor(out), dense_factor(inp)).double() + delta * torch.eye(18, dtype=torch.float64))
    assert sum(m * float(torch.log(v.double() + delta).sum()) for v, m in groups) == pytest.approx(float(expected_logdet), rel=1e-5)
    # two blocks: the evidence adds both log-determinants to −log p(D|θ*) … over all 18 + 6 weights
    head = Block("head", Eigen(torch.ones(1, 1), torch.ones(1)), Eigen(torch.eye(6), torch.arange(1.0, 7.0)))
    posterior = Posterior("all", [Block("x", out, inp), head], log_likelihood=-2.5, mean_sq_norm=1.5)
    head_logdet = float(torch.log(torch.arange(1.0, 7.0, dtype=torch.float64) + delta).sum())
    expected = -2.5 - 0.5 * delta * 1.5 + 0.5 * 24 * math.log(delta) - 0.5 * (float(expected_logdet) + head_logdet)
    assert posterior.log_marginal_likelihood(delta) == pytest.approx(expected, rel=1e-6)
    assert posterior.to("meta") is posterior
    assert {t.device.type for b in posterior.blocks for e in (b.out, b.inp) for t in (e.vectors, e.values)} == {"meta"}


def test_posterior_round_trips_every_field_and_refuses_an_unknown_format(tmp_path):
    torch.manual_seed(1)
    low_rank = Eigen(torch.linalg.qr(torch.randn(6, 6))[0][:, :2], torch.tensor([3.0, 0.5]), 0.25)
    low_rank_out = Eigen(torch.linalg.qr(torch.randn(4, 4))[0][:, :1], torch.tensor([2.0]), 0.5)
    blocks = [Block("a", low_rank_out, low_rank), Block("head", Eigen(torch.ones(1, 1), torch.ones(1)), low_rank)]
    posterior = Posterior("all", blocks, log_likelihood=-4.5, mean_sq_norm=2.75, prior_precision=0.3, info={"pairs": 12, "prior_method": "val"})
    posterior.save(tmp_path)
    loaded = Posterior.load(tmp_path)
    assert (loaded.subset, loaded.log_likelihood, loaded.mean_sq_norm, loaded.prior_precision, loaded.info) == ("all", -4.5, 2.75, 0.3, {"pairs": 12, "prior_method": "val"})
    assert [b.name for b in loaded.blocks] == ["a", "head"]
    for block, original in zip(loaded.blocks, blocks):
        for eigen, expected in ((block.out, original.out), (block.inp, original.inp)):
            assert torch.equal(eigen.vectors, expected.vectors) and torch.equal(eigen.values, expected.values) and eigen.rest == expected.rest
    assert Posterior.load(tmp_path / "elsewhere") is None
    meta = json.loads((tmp_path / "posterior.json").read_text())
    (tmp_path / "posterior.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(UserError, match="unknown posterior format"):
        Posterior.load(tmp_path)


def test_a_rank_one_lora_posterior_saves_and_reloads(tmp_path):
    """With r = 1 every LoRA A matrix has one output, so its block is exact, like the head's: their
    output factors are one shared [1] that safetensors refuses unless saved as copies."""
    model = lora_model(lora_r=1)
    fit_laplace(model, encode_pairs(model.encoder, pairs_of(6)))
    model.save(tmp_path / "m")
    reloaded = RewardModel.from_pretrained(tmp_path / "m")
    np.testing.assert_allclose(reloaded.score(["2+2?"], ["4"]).std, model.score(["2+2?"], ["4"]).std, rtol=1e-6)


def test_posterior_layers_default_to_all_and_refuse_a_head_with_bias():
    model = lora_model()
    assert list(posterior_layers(model)) == list(posterior_layers(model, "all"))
    assert len(posterior_layers(model)) == 2 * 2 * 2 + 1  # 2 layers × (q, v) × (A, B), and the head
    model.head = torch.nn.Linear(model.head.in_features, 1, bias=True)
    with pytest.raises(UserError, match="layer head is not a linear layer without bias"):
        posterior_layers(model, "head")


def test_sketched_factor_is_exact_below_its_rank_and_keeps_the_trace():
    torch.manual_seed(0)
    low = torch.randn(600, 3) @ torch.randn(3, 40)  # rank 3 < sketch rank 5: Nyström is exact
    sketch, dense = FactorSum(40, max_dense=10, rank=5, device="cpu"), low.T @ low
    sketch.add(low[:250])
    sketch.add(low[250:])
    eigen = sketch.eigen(0.5)
    top = torch.linalg.eigvalsh(dense.double()).flip(0)[:5].float()
    torch.testing.assert_close(eigen.values, 0.5 * top, rtol=1e-4, atol=1e-2)
    assert eigen.rest == pytest.approx(0.0, abs=1e-3)
    tiny = FactorSum(40, max_dense=10, rank=5, device="cpu")  # the same factor at a millionth of the scale
    tiny.add(low * 1e-6)
    torch.testing.assert_close(tiny.eigen(1.0).values, 1e-12 * top, rtol=1e-3, atol=1e-14)
    assert sketch.test.shape == (40, 10) and torch.equal(sketch.test, tiny.test)  # 2·rank columns, one Ω for a side
    nothing = FactorSum(40, max_dense=10, rank=5, device="cpu").eigen(1.0)  # no rows: zero eigenvalues, orthonormal vectors
    assert nothing.values.tolist() == [0.0] * 5 and nothing.rest == 0.0
    torch.testing.assert_close(nothing.vectors.T @ nothing.vectors, torch.eye(5))
    assert FactorSum(10, max_dense=10, rank=5, device="cpu").dense and not FactorSum(11, max_dense=10, rank=5, device="cpu").dense
    full = torch.randn(300, 40) * torch.logspace(0.5, -2, 40)  # a fast-decaying spectrum
    sketch = FactorSum(40, max_dense=10, rank=5, device="cpu")
    sketch.add(full)
    eigen = sketch.eigen(1.0)
    assert float(eigen.values.sum()) + eigen.rest * 35 == pytest.approx(float(full.square().sum()), rel=1e-4)
    top = torch.linalg.eigvalsh((full.T @ full).double()).flip(0)[:5].float()
    ratio = eigen.values / top  # Nyström never overestimates (A − Â ⪰ 0); measured 0.82–0.97 here
    assert ratio.max() <= 1 + 1e-4 and ratio.min() >= 0.75


def test_low_rank_fit_runs_and_gives_positive_std():
    model = lora_model()
    train = encode_pairs(model.encoder, pairs_of(12))
    posterior = Laplace(model, max_factor_size=16, factor_rank=4).fit(train).posterior
    assert (posterior.info["pairs"], posterior.info["truncated"], "data" in posterior.info) == (12, train.truncated, False)
    lora_a = next(b for b in posterior.blocks if "lora_A" in b.name)
    assert lora_a.inp.vectors.shape == (32, 4) and lora_a.inp.rest > 0
    rows = arithmetic_pairs(3, seed=1)
    std = model.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]).std
    assert np.all(np.isfinite(std)) and np.all(std > 0)


def test_block_diagonal_posterior_adds_the_head_and_lora_variances():
    """The posterior is block diagonal, so with one prior precision Var_all = Var_lora + Var_head."""
    from rewardstack.bayes.predict import reward_moments

    model = lora_model()
    train = encode_pairs(model.encoder, pairs_of(12))
    sequences = train.chosen[:4] + train.rejected[:4]
    variances = {}
    for subset in ("all", "lora", "head"):
        posterior = Laplace(model, subset=subset).fit(train).posterior
        posterior.prior_precision = 3.0
        variances[subset] = reward_moments(model, sequences)[1]
        assert ("head" in {b.name for b in posterior.blocks}) == (subset != "lora")
    np.testing.assert_allclose(variances["all"], variances["lora"] + variances["head"], rtol=1e-5)
    assert variances["lora"].min() > 0 and variances["head"].min() > 0


def test_curvature_is_the_same_for_any_batching_packing_and_split_between_processes():
    """The factors and the log-likelihood are sums over pairs: the batch size, packing pairs into shared
    rows, and splitting the batches between two processes change none of them."""
    from rewardstack.config import ComputeConfig
    from rewardstack.training import float32_accelerator

    model = lora_model()
    pairs = encode_pairs(model.encoder, pairs_of(7))
    laplace = Laplace(model, max_factor_size=16, factor_rank=4)

    def curvature(batch_size, pack_tokens=0, accelerator=None):
        model.use(ComputeConfig(device="cpu", pack_tokens=pack_tokens))
        laplace.batch_size = batch_size
        stats, log_likelihood = laplace._curvature(pairs, accelerator or float32_accelerator())
        sums = {f"{name}.{side}": factor.sum for side, factors in (("in", stats.inputs), ("out", stats.outputs))
                for name, factor in factors.items() if factor is not None}
        return sums, {name: float(count) for name, count in stats.positions.items()}, log_likelihood

    sums, positions, log_likelihood = curvature(batch_size=7)
    assert log_likelihood == pytest.approx(float(torch.nn.functional.logsigmoid(torch.tensor(
        model.rewards(pairs.chosen) - model.rewards(pairs.rejected), dtype=torch.float64)).sum()), rel=1e-6)
    assert positions["head"] == 0 and min(v for k, v in positions.items() if k != "head") > 0
    second = StandInAccelerator(2, index=1)
    curvature(batch_size=2, accelerator=second)  # process 1: batches 1 and 3
    for other in (curvature(batch_size=1), curvature(batch_size=3, pack_tokens=200), curvature(batch_size=2, accelerator=StandInAccelerator(2, 0, second))):
        assert other[1] == positions and other[2] == pytest.approx(log_likelihood, rel=1e-6)
        for key, value in sums.items():
            torch.testing.assert_close(other[0][key], value, rtol=1e-4, atol=1e-5)
    model.use(ComputeConfig(device="cpu"))


def test_fit_runs_where_the_model_is_set_to_run(monkeypatch):
    """The accelerator comes from the model's compute settings, so `--device cpu` holds on a GPU machine too."""
    import rewardstack.training as training
    from rewardstack.config import ComputeConfig

    asked, build = [], training.float32_accelerator
    monkeypatch.setattr(training, "float32_accelerator", lambda compute=None: asked.append(compute) or build(compute))
    model = lora_model().use(ComputeConfig(device="cpu", pack_tokens=100))
    Laplace(model, subset="head").fit(encode_pairs(model.encoder, pairs_of(2)))
    assert asked == [ComputeConfig(device="cpu", pack_tokens=100)]


def test_std_is_independent_of_batch_size_and_survives_save_and_reload(tmp_path):
    model = lora_model()
    fit_laplace(model, encode_pairs(model.encoder, pairs_of(16)))
    rows = arithmetic_pairs(5, seed=1)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] + " extra" * i for i, r in enumerate(rows)]
    one, five = model.score(prompts, responses, batch_size=1), model.score(prompts, responses, batch_size=5)
    np.testing.assert_allclose(one.std, five.std, rtol=1e-4)
    np.testing.assert_allclose(one.mean, model.rewards([model.encoder.encode(({"role": "user", "content": p},), [r])[0][0] for p, r in zip(prompts, responses)]), atol=1e-5)
    model.save(tmp_path / "m")
    reloaded = RewardModel.from_pretrained(tmp_path / "m")
    assert reloaded.posterior.prior_precision == model.posterior.prior_precision
    np.testing.assert_allclose(reloaded.score(prompts, responses).std, one.std, rtol=1e-5)


def test_validation_prior_picks_the_lowest_validation_nll():
    model = lora_model()
    train, val = encode_pairs(model.encoder, pairs_of(12)), encode_pairs(model.encoder, pairs_of(6, seed=5))
    posterior = fit_laplace(model, train, LaplaceConfig(prior="val"), val_data=val)
    curve = posterior.info["val_nll_curve"]
    assert posterior.prior_precision == min(curve, key=lambda c: c[1])[0]
    delta, nll = curve[10]
    moments = pair_moments(model, val, prior_precisions=[delta])
    logits = probit_logit(moments["chosen"] - moments["rejected"], moments["var_delta"][:, 0])
    assert nll == pytest.approx(float(np.mean(np.logaddexp(0, -logits))), rel=1e-6)
    with pytest.raises(UserError, match="needs --val-data"):
        fit_laplace(model, train, LaplaceConfig(prior="val"))


def test_laplace_reads_rows_through_its_columns_and_records_how_it_was_fitted():
    model = lora_model()
    columns = Columns(prompt_key="q", chosen_key="good", rejected_key="bad")

    def rows(pairs, oriented=False):  # the user's rows under other names, and one without a rejected response
        out = []
        for r in pairs:
            good, bad = r["chosen"], r["rejected"]
            if oriented and np.subtract(*model.score([r["prompt"]] * 2, [good, bad]).mean) < 0:
                good, bad = bad, good  # now the MAP reward prefers `good`: a sharper posterior only helps
            out.append({"q": r["prompt"], "good": good, "bad": bad})
        return out + [{"q": "1+1?", "good": "2"}]

    defaults, laplace = LaplaceConfig(), Laplace(model)
    assert (laplace.subset, laplace.batch_size, laplace.max_factor_size, laplace.factor_rank, laplace.skip_invalid) == (
        defaults.subset, defaults.batch_size, defaults.max_factor_size, defaults.factor_rank, defaults.skip_invalid)
    with pytest.raises(UserError, match="call fit"):
        laplace.optimize_prior_precision()
    started = time.perf_counter()
    laplace = Laplace(model, batch_size=4, max_factor_size=16, factor_rank=4, columns=columns, skip_invalid=True).fit(rows(arithmetic_pairs(10, seed=0)))
    elapsed = time.perf_counter() - started
    posterior, info = laplace.posterior, laplace.posterior.info
    assert model.posterior is posterior
    assert {k: info[k] for k in ("data", "pairs", "skipped", "prior_method", "max_factor_size", "factor_rank")} == {
        "data": "<list>", "pairs": 10, "skipped": {"missing field": 1}, "prior_method": "evidence", "max_factor_size": 16, "factor_rank": 4}
    assert 0 < info["fit_seconds"] <= elapsed
    assert info["evidence_curve"] == [(d, posterior.log_marginal_likelihood(d)) for d in PRIOR_GRID]
    evidence = info["evidence_prior_precision"]
    assert evidence == posterior.prior_precision
    assert next(b for b in posterior.blocks if "lora_A" in b.name).inp.vectors.shape == (32, 4)  # side 32 > 16: rank 4
    # the validation prior reads rows the same way; on pairs the MAP gets right, the sharpest posterior wins
    val = rows(arithmetic_pairs(6, seed=5), oriented=True)
    assert laplace.optimize_prior_precision("val", val) == PRIOR_GRID[-1] == posterior.prior_precision
    assert info["prior_method"] == "val" and info["val_data"] == {"data": "<list>", "pairs": 6, "truncated": 6, "skipped": {"missing field": 1}}  # max_length 64 cuts all six
    assert [d for d, _ in info["val_nll_curve"]] == PRIOR_GRID.tolist()
    assert laplace.optimize_prior_precision() == evidence == posterior.prior_precision  # back to the evidence
    assert info["prior_method"] == "evidence" and "val_nll_curve" not in info
    # fit_laplace passes every option of its config on
    config = LaplaceConfig(batch_size=3, max_factor_size=16, factor_rank=5, columns=columns, skip_invalid=True, prior="val")
    posterior = fit_laplace(model, rows(arithmetic_pairs(10, seed=0)), config, val_data=val)
    assert (posterior.info["pairs"], posterior.info["skipped"], posterior.info["prior_method"]) == (10, {"missing field": 1}, "val")
    assert next(b for b in posterior.blocks if "lora_A" in b.name).inp.vectors.shape == (32, 5)
    with pytest.raises(UserError, match="needs --val-data"):  # before any fitting: no data is even read
        fit_laplace(model, [], LaplaceConfig(prior="val"))


def test_models_without_a_reward_head_posterior_are_refused():
    with pytest.raises(UserError, match="dpo"):
        fit_laplace(lora_model(objective="dpo"), encode_pairs(lora_model().encoder, pairs_of(2)))
    full = RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=0))
    with pytest.raises(UserError, match="--subset head"):
        fit_laplace(full, encode_pairs(full.encoder, pairs_of(2)))
    head_only = Laplace(full, subset="head").fit(encode_pairs(full.encoder, pairs_of(1))).posterior  # one pair is enough
    assert head_only.n_params == 32
    assert head_only.memory_bytes() == 4 * ((1 + 1) + (32 * 32 + 32))  # float32 eigenvectors and values: out (1 × 1), in (32 × 32)
    with pytest.raises(UserError, match="no pairs to fit on"):
        Laplace(full, subset="head").fit(encode_pairs(full.encoder, []))


def test_cli_fits_scores_with_std_and_reports_ood_auroc(tmp_path):
    model = lora_model()
    model.save(tmp_path / "model")
    train = write_jsonl(arithmetic_pairs(16, seed=0), tmp_path / "train.jsonl")
    test = write_jsonl(arithmetic_pairs(6, seed=1), tmp_path / "test.jsonl")
    odd = [{"prompt": "Name a colour.", "chosen": "Blue, like the sky in the afternoon.", "rejected": "x"}] * 3
    ood = write_jsonl(odd, tmp_path / "ood.jsonl")
    result = cli("eval", "--reward", tmp_path / "model", "--data", test, "--ood-data", ood, check_rc=2)
    assert result.stderr.strip() == "error: eval: --ood-data needs a model with a Laplace posterior (run `rewardstack laplace` first)"
    result = cli("laplace", "--model-dir", tmp_path / "model", "--data", train)
    assert "fitted on 16 pairs" in result.stdout and "prior precision" in result.stdout
    rows = write_jsonl([{"prompt": "2+2?", "response": "4"}], tmp_path / "rows.jsonl")
    cli("score", "--reward", tmp_path / "model", "--input", rows, "--output", tmp_path / "out.jsonl")
    assert json.loads((tmp_path / "out.jsonl").read_text())["reward_std"] > 0
    with_std, map_only = (build_source({"kind": "model", "path": str(tmp_path / "model"), **extra}) for extra in ({}, {"posterior": False}))
    assert with_std.score(["2+2?"], ["4"]).std[0] > 0 and map_only.score(["2+2?"], ["4"]).std is None
    out = tmp_path / "eval.json"
    result = cli("eval", "--reward", tmp_path / "model", "--data", test, "--ood-data", ood, "--output", out)
    metrics = json.loads(out.read_text())
    assert set(metrics[str(test)]["laplace"]) >= {"nll", "ece", "brier", "mean_std"}
    from rewardstack.data.load import load_preferences
    from rewardstack.evaluation import response_stds, score_pairs
    from rewardstack.metrics import auroc

    fitted = RewardModel.from_pretrained(tmp_path / "model")

    def stds(path):  # each response's std as evaluation computes it: pairs encoded (and truncated) together
        return response_stds(score_pairs(fitted, encode_pairs(fitted.encoder, load_preferences(path)[0])))

    expected = auroc(stds(test), stds(ood))  # the odd responses' std against the test responses'
    assert expected != 0.5
    assert metrics[str(ood)]["ood_auroc"] == pytest.approx(expected, abs=1e-9)
    assert "laplace predictive" in result.stdout and "out-of-distribution AUROC" in result.stdout


@needs_accelerate
def test_two_processes_sum_the_same_factors_as_one(tmp_path):
    model = lora_model()
    for name in ("one", "two"):
        model.save(tmp_path / name)
    train = str(write_jsonl(arithmetic_pairs(12, seed=0), tmp_path / "train.jsonl"))
    command = ["-m", "rewardstack.cli", "laplace", "--data", train, "--batch-size", "3", "--max-factor-size", "16", "--factor-rank", "4"]
    subprocess.run([sys.executable, *command, "--model-dir", str(tmp_path / "one")], check=True, capture_output=True)
    cli_in_two_processes(*command[2:], "--model-dir", tmp_path / "two")
    one, two = (RewardModel.from_pretrained(tmp_path / name).posterior for name in ("one", "two"))
    assert two.log_likelihood == pytest.approx(one.log_likelihood, rel=1e-5)
    for a, b in zip(one.blocks, two.blocks):
        for ea, eb in ((a.out, b.out), (a.inp, b.inp)):
            torch.testing.assert_close(eb.values, ea.values, rtol=1e-4, atol=1e-6)  # sketches (side 32 > 16) too
            assert eb.rest == pytest.approx(ea.rest, rel=1e-4, abs=1e-9)
    assert two.prior_precision == pytest.approx(one.prior_precision, rel=1e-3)


def test_kfac_statistics_count_a_shared_prompt_once_by_hand():
    """One pair: chosen 4 tokens, rejected 3, sharing a 2-token prefix, packed into one row of 5 tokens
    (prefix, chosen's 2, rejected's 1) and 2 of padding. The factors sum a aᵀ and g gᵀ over those 5
    positions (the prefix once, its gradient that of both responses) and none of the padding. The head's
    exact block sums j = Σ_t g_t a_t over both sequences."""
    from rewardstack.bayes.fit import _KfacStatistics

    pair = pack([Encoded((1, 2), (3, 4)), Encoded((1, 2), (5,))], [[0, 1]], pad_id=0, row_tokens=0)
    assert pair.input_ids.tolist() == [[1, 2, 3, 4, 5]]
    torch.manual_seed(3)
    layers = {"w": torch.nn.Linear(3, 2, bias=False), "head": torch.nn.Linear(3, 1, bias=False)}
    stats = _KfacStatistics(layers, max_factor_size=16, factor_rank=2, device="cpu")
    stats.real = torch.tensor([[True] * 5 + [False] * 2])
    a, g = torch.randn(1, 7, 3), torch.randn(1, 7, 2)
    stats.on_gradient("w", a, g)
    torch.testing.assert_close(stats.inputs["w"].sum, sum(torch.outer(a[0, t], a[0, t]) for t in range(5)))
    torch.testing.assert_close(stats.outputs["w"].sum, sum(torch.outer(g[0, t], g[0, t]) for t in range(5)))
    assert float(stats.positions["w"]) == 5
    stats.on_gradient("w", a, g)  # the same pair again (a second batch): sums and positions add up
    assert float(stats.positions["w"]) == 10
    torch.testing.assert_close(stats.inputs["w"].sum, 2 * sum(torch.outer(a[0, t], a[0, t]) for t in range(5)))
    head_g = torch.randn(2, 1, 1)
    head_a = torch.randn(2, 1, 3)
    stats.on_gradient("head", head_a, head_g)
    j = head_g[0, 0, 0] * head_a[0, 0] + head_g[1, 0, 0] * head_a[1, 0]
    torch.testing.assert_close(stats.inputs["head"].sum, torch.outer(j, j))
    # the blocks: G = Σ g gᵀ, A = Σ a aᵀ / positions; the head's exact block j jᵀ with out = 1
    gram_g, gram_a = stats.outputs["w"].sum.clone(), stats.inputs["w"].sum.clone()
    blocks = {b.name: b for b in stats.blocks()}
    dense = lambda e: e.vectors @ torch.diag(e.values) @ e.vectors.T  # noqa: E731
    torch.testing.assert_close(dense(blocks["w"].out), gram_g)
    torch.testing.assert_close(dense(blocks["w"].inp), gram_a / 10)
    assert blocks["head"].out.values.tolist() == [1.0] and blocks["head"].out.vectors.tolist() == [[1.0]]
    torch.testing.assert_close(dense(blocks["head"].inp), torch.outer(j, j), atol=1e-6, rtol=1e-5)
    # a second process with the same pairs doubles every sum and the positions: A / positions stays
    stats.all_reduce(StandInAccelerator(2))
    assert float(stats.positions["w"]) == 20
    torch.testing.assert_close(stats.outputs["w"].sum, 2 * gram_g)
    torch.testing.assert_close(stats.inputs["w"].sum, 2 * gram_a)
    torch.testing.assert_close(stats.inputs["head"].sum, 2 * torch.outer(j, j))
    torch.testing.assert_close(dense({b.name: b for b in stats.blocks()}["w"].inp), gram_a / 10)


@pytest.mark.parametrize("eigenvalue, mean_sq_norm", [(50.0, 0.3), (0.01, 1000.0), (0.01, 53952.0), (50.0, 3.681e-6)])
def test_prior_precision_search_finds_an_interior_optimum_on_either_side(eigenvalue, mean_sq_norm):
    """With P equal GGN eigenvalues λ the evidence −½δm + (P/2) log δ − (P/2) log(λ + δ) peaks where
    δ² + λδ − Pλ/m = 0: δ* ≈ 15.3, ≈ 0.0042, ≈ 1.1·10⁻⁴ (between the grid's first two points, nearer the
    first) and ≈ 9000 (between its last two, nearer the last), all inside the grid and off its points."""
    block = Block("head", Eigen(torch.ones(1, 1), torch.ones(1)), Eigen(torch.eye(6), torch.full((6,), eigenvalue)))
    posterior = Posterior("head", [block], log_likelihood=-3.0, mean_sq_norm=mean_sq_norm)
    optimum = (-eigenvalue + math.sqrt(eigenvalue**2 + 4 * 6 * eigenvalue / mean_sq_norm)) / 2
    found, curve = posterior.optimize_prior_precision()
    assert found == pytest.approx(optimum, rel=1e-6)
    assert min(d for d, _ in curve) < optimum < max(d for d, _ in curve) and all(abs(d / optimum - 1) > 0.01 for d, _ in curve)


def test_factor_sums_add_up_across_processes_only_when_there_are_several():
    """all_reduce sums the dense factor, or the sketch and its exact diagonal, over the processes; with
    one process it leaves them alone. A stand-in accelerator plays a second process holding the same rows."""

    rows = torch.tensor([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    for max_dense in (3, 2):  # dense, then a sketch of rank 1
        factor = FactorSum(3, max_dense, 1, torch.device("cpu"))
        factor.add(rows)
        alone = factor.sum.clone()
        single = StandInAccelerator(1)
        factor.all_reduce(single)
        assert torch.equal(factor.sum, alone) and single.reduced == []
        accelerator = StandInAccelerator(2)
        factor.all_reduce(accelerator)
        assert torch.equal(factor.sum, 2 * alone)
        if factor.dense:
            assert torch.equal(factor.sum, 2 * rows.T @ rows) and len(accelerator.reduced) == 1
        else:
            assert torch.equal(factor.diagonal, 2 * rows.square().sum(0)) and len(accelerator.reduced) == 2
