"""The real SmolLM2-135M backbone on the real data in ../shared/data (skipped where either is absent)."""

import gzip
import itertools
import json

import pytest

from rewardstack.config import TrainConfig
from rewardstack.data.encode import Encoder
from rewardstack.data.load import load_preferences
from rewardstack.errors import UserError
from rewardstack.evaluation import evaluate
from rewardstack.model import RewardModel
from rewardstack.training import train

from conftest import require_shared_data, require_smollm2

pytestmark = pytest.mark.integration


def head_of(source, tmp_path, n, name):
    """The first n rows of a shared file, as a local file (rows are not copied anywhere else)."""
    with gzip.open(source, "rt") as handle:
        lines = list(itertools.islice(handle, n))
    path = tmp_path / name
    path.write_text("".join(lines))
    return path


def test_hh_rlhf_rows_are_all_accounted_for():
    source = require_shared_data("hh_rlhf_harmless", "test.jsonl.gz")
    with pytest.raises(UserError, match=r"test.jsonl.gz: row 219: field 'chosen': empty response"):
        load_preferences(source)
    pairs, report = load_preferences(source, skip_invalid=True)
    assert report.rows == 470 and len(pairs) + sum(report.skipped.values()) == 470
    assert all(p.prompt[-1]["role"] == "user" for p in pairs)


def test_pandalm_majority_labels():
    source = require_shared_data("pandalm", "test.jsonl.gz")
    pairs, report = load_preferences(source, skip_invalid=True)
    assert report.rows == 999 and len(pairs) + sum(report.skipped.values()) == 999
    assert report.skipped["tie (no majority)"] > 0


def test_smollm2_trains_saves_reloads_and_evaluates(tmp_path):
    require_smollm2()
    train_file = head_of(require_shared_data("hh_rlhf_harmless", "train.jsonl.gz"), tmp_path, 16, "train.jsonl")
    test_file = head_of(require_shared_data("hh_rlhf_harmless", "test.jsonl.gz"), tmp_path, 12, "test.jsonl")
    config = TrainConfig(model="smollm2-135m", max_length=128, lora_r=4, batch_size=8, epochs=1, skip_invalid=True)
    _, summary = train(config, str(train_file), output_dir=tmp_path / "run", eval_data=[str(test_file)])
    # Long dialogues: the truncation count is reported, and no pair is lost to it.
    assert summary["train"]["truncated"] > 0
    assert summary["train"]["pairs"] + sum(summary["train"]["skipped"].values()) == 16

    model = RewardModel.from_pretrained(tmp_path / "run" / "model")
    assert model.tokenizer.chat_template and "<|im_start|>" in model.tokenizer.chat_template
    results = evaluate(model, [str(test_file)])
    assert results[str(test_file)]["pairs"] == 12
    assert results[str(test_file)]["nll"] == pytest.approx(summary["eval"][str(test_file)]["nll"], abs=1e-5)


def test_smollm2_chat_template_boundary():
    require_smollm2()
    from rewardstack.backbones import load_backbone

    _, tokenizer = load_backbone("smollm2-135m")
    encoder = Encoder(tokenizer, max_length=64)
    (seq,), cut = encoder.encode(({"role": "user", "content": "Hi"},), ["Hello there."])
    assert not cut
    assert tokenizer.decode(seq.prompt_ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(seq.response_ids) == "Hello there.<|im_end|>\n"


def test_smollm2_demo_end_to_end_small(tmp_path):
    """The main job on the real backbone at a small size: samples are gold-checked, pairs train a model,
    and best-of-n at n = 1 is the policy's own accuracy on the held-out problems."""
    require_smollm2()
    from rewardstack.demo import DemoConfig, run_demo

    summary = run_demo(tmp_path, DemoConfig(train_prompts=4, bon_prompts=2, n=4, pairs_per_prompt=2, objective="bt", seed=1))
    pools = [json.loads(line) for line in (tmp_path / "data" / "pools.jsonl").read_text().splitlines()]
    assert len(pools) == 6 and all(len(p["responses"]) == 4 for p in pools)
    held_out_accuracy = sum(sum(p["gold"]) for p in pools[4:]) / 8
    assert summary["curves"]["mean"]["gold"][0] == pytest.approx(held_out_accuracy)
    assert summary["train_pairs"] > 0 and (tmp_path / "run" / "model" / "posterior.safetensors").exists()


def test_smollm2_reward_model_exports_to_plain_transformers(tmp_path):
    """A LoRA reward model on the real backbone, exported, gives the same rewards from
    AutoModelForSequenceClassification, read at the last token as Transformers pools it."""
    require_smollm2()
    import torch
    from transformers import AutoModelForSequenceClassification

    from rewardstack.data.encode import as_messages
    from rewardstack.export import export_model
    from rewardstack.model import ModelConfig

    model = RewardModel.create(ModelConfig(model="smollm2-135m", max_length=128, lora_r=4))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.trainable_parameters().items():  # a head and LoRA update of realistic size
            parameter.add_(torch.randn_like(parameter) * (0.05 if name.startswith("head") else 0.01))
    model.save(tmp_path / "model")
    export_model(tmp_path / "model", tmp_path / "exported")
    prompts = ["What is 2 + 2?", "Name a colour.", "Write a haiku about rain."]
    responses = ["4", "Blue.", "Soft rain on the roof, / the garden drinks it slowly, / puddles hold the sky."]
    ours = RewardModel.from_pretrained(tmp_path / "model").score(prompts, responses).mean
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        theirs = [exported(input_ids=torch.tensor([model.encoder.encode(as_messages(p), [r])[0][0].ids])).logits[0, 0].item()
                  for p, r in zip(prompts, responses)]
    assert max(abs(ours)) > 0.1
    assert theirs == pytest.approx(ours.tolist(), abs=1e-4)
