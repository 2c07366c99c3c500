import importlib.util
import json
import shutil
import os
import subprocess
import sys

import numpy as np
import pytest

import rewardstack.training as train_module
from rewardstack.config import TrainConfig
from rewardstack.data.load import Columns
from rewardstack.errors import UserError
from rewardstack.model import RewardModel
from rewardstack.synthetic import arithmetic_pairs, write_jsonl
from rewardstack.training import micro_batches, plan_batches, train

from conftest import cli_in_two_processes, needs_accelerate


def tiny_config(**overrides) -> TrainConfig:
    values = dict(model="tiny-random", max_length=256, lora_r=4, batch_size=8, micro_batch_size=8,
                  learning_rate=5e-3, warmup_ratio=0.0, seed=3, columns=Columns())
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return str(write_jsonl(arithmetic_pairs(40, seed=0), root / "train.jsonl")), str(write_jsonl(arithmetic_pairs(16, seed=1), root / "test.jsonl"))


def final_rewards(run_dir, n=16):
    rows = arithmetic_pairs(n, seed=1)
    return RewardModel.from_pretrained(run_dir / "model").score([r["prompt"] for r in rows], [r["chosen"] for r in rows]).mean


def test_plan_batches_covers_every_pair_once_per_epoch():
    lengths = list(range(37))
    batches = plan_batches(lengths, 8, epochs=2, seed=0)
    assert len(batches) == 10
    first, second = batches[:5], batches[5:]
    assert sorted(i for b in first for i in b) == lengths == sorted(i for b in second for i in b)
    assert plan_batches(lengths, 8, 2, 0) == batches


def test_micro_batches_split_a_global_batch_evenly_across_processes():
    assert micro_batches([0, 1, 2, 3, 4], rank=0, world=1, micro_batch_size=2) == [([0, 1], 1.0), ([2, 3], 1.0), ([4], 1.0)]
    assert micro_batches([0, 1, 2, 3, 4], rank=1, world=2, micro_batch_size=8) == [([1, 3], 1.0)]
    # One pair for two processes: the second runs a zero-weight pass so both do the same work.
    assert micro_batches([9], rank=1, world=2, micro_batch_size=4) == [([9], 0.0)]


def test_training_writes_run_directory_and_learns(tmp_path, data):
    train_file, test_file = data
    _, summary = train(tiny_config(epochs=3), train_file, output_dir=tmp_path / "run", eval_data=[test_file])
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"config.yaml", "metrics.jsonl", "model", "summary.json"}
    losses = [json.loads(l)["loss"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert len(losses) == summary["steps"] == 15
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert summary["train"]["pairs"] == 40 and summary["train"]["truncated"] == 0
    assert set(summary["eval"][test_file]["subsets"]) == {"wrong result", "wrong operands", "evasive"}
    with pytest.raises(UserError, match="already holds a run"):
        train(tiny_config(), train_file, output_dir=tmp_path / "run")


def test_gradient_accumulation_matches_one_big_batch(tmp_path, data):
    train_file, _ = data
    train(tiny_config(), train_file, output_dir=tmp_path / "big")
    train(tiny_config(micro_batch_size=3), train_file, output_dir=tmp_path / "acc")
    # Micro-batches of 3, 3 and 2 pairs: equal only if every pair is weighted 1/8 (float32 order noise ~2e-5).
    np.testing.assert_allclose(final_rewards(tmp_path / "acc"), final_rewards(tmp_path / "big"), atol=1e-4)


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(tmp_path, data, monkeypatch):
    train_file, test_file = data
    config = tiny_config(epochs=2, save_every=3, lora_dropout=0.1)
    _, full = train(config, train_file, output_dir=tmp_path / "full", eval_data=[test_file])

    real_save = train_module.save_checkpoint

    def save_then_die(output_dir, step, *args):
        real_save(output_dir, step, *args)
        if step == 6:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(config, train_file, output_dir=tmp_path / "cut", eval_data=[test_file])
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    _, resumed = train(config, train_file, output_dir=tmp_path / "cut", eval_data=[test_file], resume=True)

    assert resumed["resumed_from_step"] == 6
    assert resumed["eval"][test_file]["nll"] == pytest.approx(full["eval"][test_file]["nll"], abs=1e-6)
    np.testing.assert_allclose(final_rewards(tmp_path / "cut"), final_rewards(tmp_path / "full"), atol=1e-5)
    steps = [json.loads(l)["step"] for l in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines() if "loss" in l]
    assert steps == list(range(1, 11))


def test_resume_needs_a_checkpoint_and_the_same_options(tmp_path, data):
    with pytest.raises(UserError, match="no run to resume"):
        train(tiny_config(), data[0], output_dir=tmp_path / "empty", resume=True)
    train(tiny_config(), data[0], output_dir=tmp_path / "run")
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        train(tiny_config(), data[0], output_dir=tmp_path / "run", resume=True)
    with pytest.raises(UserError, match="other options than the run was started with: learning_rate"):
        train(tiny_config(learning_rate=1e-2), data[0], output_dir=tmp_path / "run", resume=True)


@needs_accelerate
def test_two_processes_match_one_with_the_same_global_batch(tmp_path, data):
    """Two DDP processes, with gradient checkpointing and pairs packed into rows, train the model one
    plain process does."""
    train_file, _ = data
    common = ["train", "--data", train_file, "--model", "tiny-random", "--max-length", "256", "--lora-r", "4",
              "--batch-size", "8", "--learning-rate", "5e-3", "--warmup-ratio", "0", "--seed", "3"]
    rewardstack = [sys.executable, "-m", "rewardstack.cli"]
    subprocess.run(rewardstack + common + ["--output-dir", str(tmp_path / "one")], check=True, capture_output=True)
    cli_in_two_processes(*common, "--micro-batch-size", "4", "--gradient-checkpointing", "--pack-tokens", "300", "--output-dir", tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    np.testing.assert_allclose(final_rewards(tmp_path / "two"), final_rewards(tmp_path / "one"), atol=1e-4)


DEEPSPEED_MISSING = importlib.util.find_spec("deepspeed") is None


@needs_accelerate
@pytest.mark.parametrize("lora_r", [4, 0], ids=["lora", "full"])
@pytest.mark.parametrize("launch", ["fsdp2", "deepspeed-zero3"])
def test_sharded_training_in_two_processes_gives_the_model_of_one_and_resumes_exactly(tmp_path, data, launch, lora_r):
    """configs/accelerate/{fsdp2,deepspeed-zero3}.yaml shard every weight across 2 CPU processes: the saved
    model (gathered from the shards) and the eval metrics equal one plain process's, for LoRA and full
    fine-tuning. A run resumed from a checkpoint (each process's optimizer shard saved) ends exactly where
    the uninterrupted one did, and a checkpoint written by sharded processes is refused by a plain one."""
    if launch.startswith("deepspeed") and DEEPSPEED_MISSING:
        pytest.skip("deepspeed is not installed (the test extras install it)")
    train_file, test_file = data
    common = ["train", "--data", train_file, "--eval-data", test_file, "--model", "tiny-random", "--max-length", "256",
              "--lora-r", str(lora_r), "--batch-size", "8", "--learning-rate", "5e-3", "--warmup-ratio", "0", "--seed", "3"]
    subprocess.run([sys.executable, "-m", "rewardstack.cli", *common, "--output-dir", str(tmp_path / "one")], check=True, capture_output=True)
    cli_in_two_processes(*common, "--save-every", "2", "--output-dir", tmp_path / "two", config=launch)
    sharded = final_rewards(tmp_path / "two")
    np.testing.assert_allclose(sharded, final_rewards(tmp_path / "one"), atol=1e-5)
    one, two = (json.loads((tmp_path / run / "summary.json").read_text()) for run in ("one", "two"))
    assert two["processes"] == 2 and two["eval"][test_file]["nll"] == pytest.approx(one["eval"][test_file]["nll"], abs=1e-5)
    if lora_r:
        for leftover in ("model", "checkpoints/step-4"):  # as if killed after step 3
            shutil.rmtree(tmp_path / "two" / leftover)
        with pytest.raises(UserError, match="written by a run with 2 sharded processes: resume it with the same accelerate launch"):
            train(tiny_config(save_every=2), train_file, eval_data=[test_file], output_dir=tmp_path / "two", resume=True)
        cli_in_two_processes(*common, "--save-every", "2", "--output-dir", tmp_path / "two", "--resume", config=launch)
        assert json.loads((tmp_path / "two" / "summary.json").read_text())["resumed_from_step"] == 2
        np.testing.assert_array_equal(final_rewards(tmp_path / "two"), sharded)


def test_non_finite_loss_stops_with_the_step_and_a_resumable_checkpoint(tmp_path, data, monkeypatch):
    """A loss that turns NaN at step 3 stops the run before the model is updated, names the step, and leaves
    checkpoint step-2; resuming once the cause is gone gives the same model as a run that never failed."""
    train_file, _ = data
    config = tiny_config(epochs=1, batch_size=8)  # 5 steps
    calls = {"n": 0}
    original = train_module.objective_losses

    def poisoned(*args):
        calls["n"] += 1
        losses = original(*args)
        return losses * float("nan") if calls["n"] == 3 else losses

    monkeypatch.setattr(train_module, "objective_losses", poisoned)
    with pytest.raises(UserError, match=r"training loss is nan at step 3 .*checkpoint .*step-2: continue with --resume"):
        train(config, train_file, output_dir=tmp_path / "run")
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-2"]
    assert not (tmp_path / "run" / "model").exists()
    monkeypatch.setattr(train_module, "objective_losses", original)
    train(config, train_file, output_dir=tmp_path / "run", resume=True)
    train(config, train_file, output_dir=tmp_path / "straight")
    np.testing.assert_allclose(final_rewards(tmp_path / "run"), final_rewards(tmp_path / "straight"), atol=1e-6)


def test_full_disk_at_the_final_save_loses_nothing_and_resumes(tmp_path, data, monkeypatch):
    """The final save fails with ENOSPC: no half-written model folder, a message that says how to recover,
    and a rerun with --resume finishes from the last checkpoint (metrics.jsonl does not block it)."""
    import errno

    train_file, _ = data
    config = tiny_config(epochs=1, save_every=2)
    original = RewardModel.save

    def full_disk(self, directory):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(RewardModel, "save", full_disk)
    with pytest.raises(UserError, match=r"could not be saved \(No space left on device\).*free space and rerun with --resume to continue from its checkpoint step-4"):
        train(config, train_file, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "model").exists() and not list((tmp_path / "run").glob(".model*"))
    monkeypatch.setattr(RewardModel, "save", original)
    _, summary = train(config, train_file, output_dir=tmp_path / "run", resume=True)
    assert summary["resumed_from_step"] == 4 and (tmp_path / "run" / "model" / "rewardstack.json").exists()


def test_an_interrupted_save_leaves_the_old_model_in_place(tmp_path):
    """RewardModel.save writes beside the folder and renames: a failure half-way keeps the saved model whole."""
    from rewardstack.model import ModelConfig

    model = RewardModel.create(ModelConfig(model="tiny-random", max_length=64, lora_r=2))
    model.save(tmp_path / "m")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m").stat().st_mode & 0o777 == 0o777 & ~umask  # as mkdir would make it, not mkdtemp's 0o700
    before = {p.name: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()}
    model.tokenizer.save_pretrained = lambda *a, **k: (_ for _ in ()).throw(OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        model.save(tmp_path / "m")
    assert {p.name: p.read_bytes() for p in (tmp_path / "m").rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_configs_are_checked_when_built_from_python():
    from rewardstack.model import ModelConfig
    from rewardstack.sampling import SamplingConfig

    with pytest.raises(UserError, match=r"lora_dropout must be in \[0, 1\), got 1.0 \(option --lora-dropout\)"):
        ModelConfig(lora_dropout=1.0)
    with pytest.raises(UserError, match="learning_rate must be a positive number, got -0.1"):
        tiny_config(learning_rate=-0.1)
    with pytest.raises(UserError, match=r"max_prompt_length must be between 1 and max_length − 1 = 63"):
        tiny_config(max_length=64, max_prompt_length=64)
    with pytest.raises(UserError, match="save_every must be 0 \\(off\\) or a positive number of steps, got -1"):
        tiny_config(save_every=-1)
    with pytest.raises(UserError, match=r"top_p must be in \(0, 1\], got 0.0"):
        SamplingConfig(top_p=0.0)
    assert tiny_config(max_length=64, max_prompt_length=63, lora_dropout=0.0, save_every=0).max_prompt_length == 63


def test_training_in_a_process_set_to_bf16_by_another_trainer_says_so(tmp_path, data):
    """accelerate's precision is fixed per process: after another trainer chose bf16, training refuses
    with the reason instead of running in bf16 unasked (a fresh process, as the state is global)."""
    code = (
        "import sys; from accelerate import Accelerator; Accelerator(cpu=True, mixed_precision='bf16')\n"
        "from rewardstack.config import TrainConfig; from rewardstack.training import train; from rewardstack.errors import UserError\n"
        "try:\n    train(TrainConfig(model='tiny-random', max_length=64, lora_r=2), sys.argv[1], output_dir=sys.argv[2])\n"
        "except UserError as err:\n    print(err)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, data[0], str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert "accelerate was already set up in this process with another precision" in result.stdout, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()
