"""Hugging Face sequence-classification reward models in (as reward sources, as starting points for
training) and out (`rewardstack export`), on tiny random Llama and Qwen2 classifiers built here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForSequenceClassification

from rewardstack.backbones import tiny_random_tokenizer
from rewardstack.data.encode import pad_right
from rewardstack.errors import UserError
from rewardstack.losses import bradley_terry_loss
from rewardstack.model import ModelConfig, RewardModel
from rewardstack.sources import load_source
from rewardstack.sources.hf import HFRewardModel
from rewardstack.synthetic import arithmetic_pairs

from conftest import cli, write_rows

PROMPTS = ["What is 2 + 2?", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}], "Say hi.", "Count to three."]
RESPONSES = ["4", "Blue, the colour of the sky on a clear day.", "Hello!", "One, two, three."]
INST_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}{% endfor %}"
)


def inst_tokenizer():
    """A byte-level tokenizer with other specials and an [INST] template (no padding token of its own)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens({"bos_token": "<s>", "eos_token": "</s>"})
    fast.chat_template = INST_TEMPLATE
    return fast


SIZES = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def save_llama(directory, num_labels=1, seed=0):
    tokenizer = tiny_random_tokenizer()
    labels = {0: "helpful", 1: "honest", 2: "harmless"} if num_labels == 3 else None
    config = LlamaConfig(vocab_size=len(tokenizer), **SIZES, tie_word_embeddings=True, num_labels=num_labels,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
                         **({"id2label": labels, "label2id": {v: k for k, v in labels.items()}} if labels else {}))
    return save_classifier(LlamaForSequenceClassification, config, tokenizer, directory, seed)


def save_qwen(directory, seed=1):
    tokenizer = inst_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), **SIZES, tie_word_embeddings=False, pad_token_id=None, num_labels=1,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return save_classifier(Qwen2ForSequenceClassification, config, tokenizer, directory, seed)


def save_classifier(cls, config, tokenizer, directory, seed):
    """A classifier of `cls` initialised from `seed`, its score head drawn at std 1 (rewards that differ per row), saved."""
    torch.manual_seed(seed)
    model = cls(config)
    torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    ours = RewardModel.create(ModelConfig(model="tiny-random", max_length=128, lora_r=2))
    torch.manual_seed(5)
    torch.nn.init.normal_(ours.head.weight, std=1.0)
    ours.save(root / "ours")
    return {"llama": save_llama(root / "llama"), "qwen": save_qwen(root / "qwen"), "multi": save_llama(root / "multi", num_labels=3, seed=2),
            "ours": root / "ours", "root": root}


def direct(model, tokenizer, ids_list, padding_side="right"):
    """The model's own outputs: one unpadded call per row, and one padded batch on the given side."""
    alone = [model(input_ids=torch.tensor([ids])).logits[0].detach().numpy() for ids in ids_list]
    pad = model.config.pad_token_id
    if pad is None:
        return np.array(alone), None
    ids, mask = pad_right(ids_list, pad)
    if padding_side == "left":
        ids, mask = torch.stack([row.roll(int((m == 0).sum())) for row, m in zip(ids, mask)]), torch.stack([m.roll(int((m == 0).sum())) for m in mask])
    return np.array(alone), model(input_ids=ids, attention_mask=mask).logits.detach().numpy()


@pytest.mark.parametrize("name", ["llama", "qwen"])
def test_rewards_equal_the_models_own_forward(folders, name):
    source = load_source(folders[name])
    assert isinstance(source, HFRewardModel)
    ids = [source.token_ids(p, r)[0] for p, r in zip(PROMPTS, RESPONSES)]
    rendered = source.tokenizer.apply_chat_template(as_chat(PROMPTS[1], RESPONSES[1]), tokenize=False)
    assert ids[1] == source.tokenizer(rendered, add_special_tokens=False)["input_ids"]  # the model's own template, tokenised whole
    alone, _ = direct(source.model, source.tokenizer, ids)
    assert np.ptp(alone[:, 0]) > 0.1  # rewards that differ per row
    for batch_size in (1, 3, 16):
        np.testing.assert_allclose(source.score(PROMPTS, RESPONSES, batch_size=batch_size).mean, alone[:, 0], atol=1e-5)
    for side in ("right", "left"):
        _, padded = direct(source.model, source.tokenizer, ids, side)
        if padded is not None:  # qwen has no padding token: the model itself cannot batch
            np.testing.assert_allclose(padded[:, 0], alone[:, 0], atol=1e-5)


def as_chat(prompt, response):
    prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    return [*prompt, {"role": "assistant", "content": response}]


def test_multi_output_models_give_named_parts_and_reduce_as_told(folders):
    with pytest.raises(UserError, match=r"3 outputs \(helpful, honest, harmless\): say how to reduce them"):
        load_source(folders["multi"])
    tree = folders["root"] / "multi.yaml"
    tree.write_text(yaml.safe_dump({"kind": "model", "path": "multi", "reduce": {"weights": [1.0, 0.0, -2.0]}}))
    scores = load_source(tree).score(PROMPTS, RESPONSES)
    assert list(scores.parts) == ["helpful", "honest", "harmless"]
    np.testing.assert_allclose(scores.mean, scores.parts["helpful"] - 2 * scores.parts["harmless"], atol=1e-12)
    tree.write_text(yaml.safe_dump({"kind": "model", "path": "multi", "reduce": {"index": 1}}))
    np.testing.assert_allclose(load_source(tree).score(PROMPTS, RESPONSES).mean, scores.parts["honest"], atol=1e-12)
    tree.write_text(yaml.safe_dump({"kind": "model", "path": "multi", "reduce": {"index": 3}}))
    with pytest.raises(UserError, match="reduce.index must be an output index from 0 to 2, got 3"):
        load_source(tree)
    tree.write_text(yaml.safe_dump({"kind": "model", "path": "multi", "reduce": {"index": 0}, "max_length": "long"}))
    with pytest.raises(UserError, match="max_length must be a whole number of tokens, at least 8, got 'long'"):
        load_source(tree)


def test_a_tree_mixes_models_with_different_tokenizers_and_a_rule(folders, tmp_path):
    """One ensemble: a Llama classifier (ChatML), a Qwen2 classifier ([INST] template, no pad token), a
    rewardstack model and a length rule; each member scores exactly as it does alone."""
    root = folders["root"]
    tree = root / "mixed.yaml"
    members = [{"name": "llama", "source": {"kind": "model", "path": "llama"}}, {"name": "qwen", "source": {"kind": "model", "path": "qwen"}},
               {"name": "ours", "source": {"kind": "model", "path": "ours"}}, {"name": "length", "source": {"kind": "rule", "builtin": "length"}}]
    tree.write_text(yaml.safe_dump({"kind": "ensemble", "combine": "mean", "members": members}))
    scores = load_source(tree).score(PROMPTS, RESPONSES, batch_size=2)
    alone = {name: load_source(root / name).score(PROMPTS, RESPONSES).mean for name in ("llama", "qwen", "ours")}
    for name, values in alone.items():
        np.testing.assert_allclose(scores.parts[name], values, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in alone.values()}) == 3  # three different models
    rows = write_rows(tmp_path / "rows.jsonl", [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES)])
    cli("score", "--reward", tree, "--input", rows, "--output", tmp_path / "scored.jsonl")
    written = [json.loads(line) for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    np.testing.assert_allclose([w["reward"] for w in written], scores.mean, atol=1e-5)
    cli("score", "--reward", folders["qwen"], "--input", rows, "--output", tmp_path / "qwen.jsonl")
    np.testing.assert_allclose([json.loads(line)["reward"] for line in (tmp_path / "qwen.jsonl").read_text().splitlines()], alone["qwen"], atol=1e-5)


def test_best_of_n_bandit_and_server_take_a_hf_model(folders, tmp_path):
    from rewardstack.bon import run_bandit_best_of_n
    from rewardstack.data.pools import load_pools
    from test_server import call, running

    pools = write_rows(tmp_path / "pools.jsonl", [{"prompt": p, "responses": [r, r + " Sure.", "No."], "gold": [1, 0, 0]} for p, r in zip(PROMPTS, RESPONSES)])
    result = cli("bon", "--reward", folders["llama"], "--pools", pools, "--output-dir", tmp_path / "bon")
    assert "4 pools" in result.stdout
    source = load_source(folders["llama"])
    records = [json.loads(line) for line in (tmp_path / "bon" / "results.jsonl").read_text().splitlines()]
    expected = source.score([PROMPTS[0]] * 3, [RESPONSES[0], RESPONSES[0] + " Sure.", "No."]).mean
    np.testing.assert_allclose(records[0]["reward"], expected, atol=1e-5)
    tree = folders["root"] / "bandit.yaml"
    tree.write_text(yaml.safe_dump({"kind": "bandit", "context": {"kind": "words", "dim": 8}, "members": [
        {"name": "llama", "source": {"kind": "model", "path": "llama"}}, {"name": "qwen", "source": {"kind": "model", "path": "qwen"}}]}))
    bandit = run_bandit_best_of_n(load_source(tree), load_pools(pools)[0])
    assert sum(bandit["arm_counts"].values()) == 4
    with running(source) as (url, _):
        status, answer, _ = call(url + "/v1/score", {"prompt": PROMPTS[1], "responses": RESPONSES})
        info = call(url + "/v1/info")[1]
    assert status == 200 and answer["rewards"] == pytest.approx(source.score([PROMPTS[1]] * 4, RESPONSES).mean.tolist(), abs=1e-5)
    assert info["models"][0]["objective"] == "sequence-classification"


def test_training_starts_from_the_score_head(folders, tmp_path):
    """A model created from a sequence classifier scores exactly as the classifier; its first training
    step's loss is the Bradley–Terry loss of the classifier's own rewards."""
    original = load_source(folders["llama"])
    created = RewardModel.create(ModelConfig(model=str(folders["llama"]), max_length=512, lora_r=2))
    np.testing.assert_allclose(created.score(PROMPTS, RESPONSES).mean, original.score(PROMPTS, RESPONSES).mean, atol=1e-5)
    pairs = arithmetic_pairs(8, seed=3)
    data = write_rows(tmp_path / "pairs.jsonl", pairs)
    cli("train", "--data", data, "--output-dir", tmp_path / "run", "--model", folders["llama"], "--max-length", "512", "--lora-r", "2",
        "--batch-size", "8", "--warmup-ratio", "0")
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    chosen = original.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs]).mean
    rejected = original.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs]).mean
    expected = bradley_terry_loss(torch.tensor(chosen), torch.tensor(rejected)).mean().item()
    assert first["step"] == 1 and first["loss"] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(UserError, match="without an LM head cannot train the haf objective"):
        RewardModel.create(ModelConfig(model=str(folders["qwen"]), objective="haf"))


@pytest.mark.parametrize("lora_r", [2, 0])
def test_export_loads_in_transformers_with_our_rewards(tmp_path, lora_r):
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=128, lora_r=lora_r))
    torch.manual_seed(7)
    with torch.no_grad():
        for name, parameter in model.trainable_parameters().items():
            parameter.add_(torch.randn_like(parameter) * (0.5 if "head" in name else 0.05))  # LoRA B leaves zero: a real update
    model.save(tmp_path / "model")
    result = cli("export", "--model-dir", tmp_path / "model", "--output", tmp_path / "exported")
    assert "AutoModelForSequenceClassification" in result.stdout
    ours = RewardModel.from_pretrained(tmp_path / "model").score(PROMPTS, RESPONSES).mean
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported")
    ids = [HFRewardModel(exported, model.tokenizer, "exported").token_ids(p, r)[0] for p, r in zip(PROMPTS, RESPONSES)]
    for side in ("right", "left"):
        alone, padded = direct(exported, model.tokenizer, ids, side)
        np.testing.assert_allclose(alone[:, 0], ours, atol=1e-5)
        np.testing.assert_allclose(padded[:, 0], ours, atol=1e-5)
    np.testing.assert_allclose(load_source(tmp_path / "exported").score(PROMPTS, RESPONSES).mean, ours, atol=1e-5)
    files = {p.name for p in (tmp_path / "exported").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= files and not any(f.endswith((".bin", ".pt")) for f in files)
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["id2label"] == {"0": "reward"} and config["pad_token_id"] == model.tokenizer.pad_token_id
    # what Transformers 4 (reward-bench's pin) reads: without rope_theta it silently used another RoPE base
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] and config["torch_dtype"] == "float32"
    tokenizer_config = json.loads((tmp_path / "exported" / "tokenizer_config.json").read_text())
    assert tokenizer_config["tokenizer_class"] == "PreTrainedTokenizerFast" and tokenizer_config["model_input_names"] == ["input_ids", "attention_mask"]
    assert tokenizer_config["chat_template"] == model.tokenizer.chat_template


def test_a_local_base_model_is_recorded_so_it_loads_from_anywhere(folders, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(folders["llama"], tmp_path / "bases" / "llama")
    monkeypatch.chdir(tmp_path / "bases")
    model = RewardModel.create(ModelConfig(model="llama", max_length=128, lora_r=2))
    model.save(tmp_path / "rm")
    expected = model.score(PROMPTS, RESPONSES).mean
    monkeypatch.chdir(tmp_path)
    assert RewardModel.from_pretrained(tmp_path / "rm").config.model == str(tmp_path / "bases" / "llama")
    np.testing.assert_allclose(RewardModel.from_pretrained("rm").score(PROMPTS, RESPONSES).mean, expected, atol=1e-6)
    (tmp_path / "bases" / "llama").rename(tmp_path / "bases" / "moved")
    with pytest.raises(UserError, match=r"its base model .*bases/llama is not there any more"):
        RewardModel.from_pretrained("rm")


def test_head_laplace_gives_any_reward_model_a_std_without_touching_its_folder(folders, tmp_path):
    import hashlib

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

    before = digest(folders["llama"])
    data = write_rows(tmp_path / "pairs.jsonl", arithmetic_pairs(12, seed=4))
    refused = cli("laplace", "--model-dir", folders["llama"], "--data", data, "--subset", "head", check_rc=2)
    assert "give --output, a new folder" in refused.stderr
    cli("laplace", "--model-dir", folders["llama"], "--data", data, "--subset", "head", "--output", tmp_path / "with_std")
    assert digest(folders["llama"]) == before
    assert {p.name for p in (tmp_path / "with_std").iterdir()} >= {"head.safetensors", "posterior.json", "posterior.safetensors", "rewardstack.json"}
    assert not (tmp_path / "with_std" / "backbone").exists()  # the weights stay in the user's folder, referenced
    scores = load_source(tmp_path / "with_std").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(scores.mean, load_source(folders["llama"]).score(PROMPTS, RESPONSES).mean, atol=1e-5)
    assert scores.std is not None and (scores.std > 0).all() and np.ptp(scores.std) > 0


def test_trl_grpo_takes_an_exported_model_as_its_reward(tmp_path, monkeypatch):
    """TRL loads the exported folder as a reward model (reward_funcs=PATH) and trains one GRPO step with it."""
    trl = pytest.importorskip("trl", reason="TRL is not installed (pip install trl)")
    from datasets import Dataset

    from rewardstack.backbones import tiny_random_backbone
    from rewardstack.export import export_model

    monkeypatch.chdir(tmp_path)
    policy, tokenizer = tiny_random_backbone()
    policy.save_pretrained("policy")
    tokenizer.save_pretrained("policy")
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=128, lora_r=2))
    torch.manual_seed(0)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    model.save("rm")
    export_model("rm", "rm-hf")
    prompts = Dataset.from_list([{"prompt": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(4)])
    args = trl.GRPOConfig(output_dir="out", max_steps=1, per_device_train_batch_size=4, num_generations=2, max_completion_length=8,
                          report_to=[], logging_steps=1, use_cpu=True, bf16=False, save_strategy="no")
    trainer = trl.GRPOTrainer(model="policy", reward_funcs="rm-hf", args=args, train_dataset=prompts)
    trainer.train()
    logged = trainer.state.log_history[0]
    assert logged["step"] == 1 and np.isfinite(logged["rewards/rm-hf/mean"]) and logged["rewards/rm-hf/std"] > 0


def test_export_keeps_a_head_posterior_when_asked(tmp_path):
    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=128, lora_r=2))
    torch.manual_seed(8)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    model.save(tmp_path / "model")
    data = write_rows(tmp_path / "pairs.jsonl", arithmetic_pairs(12, seed=4))
    cli("laplace", "--model-dir", tmp_path / "model", "--data", data, "--subset", "all")
    refused = cli("export", "--model-dir", tmp_path / "model", "--output", tmp_path / "e1", "--keep-posterior", check_rc=2)
    assert "needs a head posterior" in refused.stderr
    cli("laplace", "--model-dir", tmp_path / "model", "--data", data, "--subset", "head")
    cli("export", "--model-dir", tmp_path / "model", "--output", tmp_path / "e2", "--keep-posterior")
    (tmp_path / "e2").rename(tmp_path / "moved")  # the folder carries its own weights
    expected = RewardModel.from_pretrained(tmp_path / "model").score(PROMPTS, RESPONSES)
    restored = RewardModel.from_pretrained(tmp_path / "moved").score(PROMPTS, RESPONSES)
    np.testing.assert_allclose(restored.mean, expected.mean, atol=1e-5)
    np.testing.assert_allclose(restored.std, expected.std, rtol=1e-4)
    assert HFRewardModel.from_pretrained(tmp_path / "moved").score(PROMPTS, RESPONSES).mean == pytest.approx(expected.mean.tolist(), abs=1e-5)


def test_a_dpo_model_exports_as_its_causal_lm(tmp_path):
    from transformers import AutoModelForCausalLM

    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=128, lora_r=2, objective="dpo", beta=0.2))
    torch.manual_seed(9)
    with torch.no_grad():
        for parameter in model.trainable_parameters().values():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save(tmp_path / "model")
    cli("export", "--model-dir", tmp_path / "model", "--output", tmp_path / "lm")
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "lm").eval()
    ids = torch.tensor([model.encoder.encode(({"role": "user", "content": "Hi"},), ["Hello there."])[0][0].ids])
    with torch.no_grad():
        expected = model.backbone(input_ids=ids).logits
        np.testing.assert_allclose(exported(input_ids=ids).logits.numpy(), expected.numpy(), atol=1e-5)
    card = (tmp_path / "lm" / "README.md").read_text()
    assert "β·(log π − log π_ref), with β = 0.2 and the reference tiny-random" in card
