"""rewardstack vs TRL's RewardTrainer: one epoch of Bradley–Terry training on the same pairs.

Same backbone (SmolLM2-135M-Instruct, float32), same first N valid pairs of
../shared/data/hh_rlhf_harmless/train.jsonl.gz, same token ids (chat template and truncation to
--max-length by rewardstack's encoder, handed to TRL pre-tokenised, because TRL would otherwise drop
every pair longer than max_length), LoRA r=16 / alpha 32 on all linear layers, batch 8, lr 1e-4 linear,
no warm-up. Each tool runs in its own process (peak RSS is per process). Both models are then scored on
the whole hh_rlhf_harmless test split, encoded the same way, with the same metric code.

rewardstack runs in up to four variants: `plain` (a row per sequence, padded: the layout TRL uses),
`share` (a pair's prompt computed once for chosen and rejected), `pack` (sequences packed into rows of
2 × max-length tokens, padding-free) and `share+pack`.

    pip install -e '.[bench]'
    python bench/train_vs_trl.py [--pairs 256] [--max-length 256] [--test-pairs N] [--variants plain share pack share+pack trl]

On a GPU: `--device cuda --bf16` (both tools in bfloat16 autocast); the table then adds MFU, model FLOPs
6 · parameters · tokens/s (forward and backward, attention left out) over --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hh_rlhf_harmless"
LR, BATCH, LORA_R, LORA_ALPHA, SEED = 1e-4, 8, 16, 32, 42
VARIANTS = ("plain", "share", "pack", "share+pack", "trl")


def prepare(work: Path, data: Path, pairs: int, max_length: int) -> dict:
    """Write the training rows and the encoded train/test token ids both tools use."""
    from rewardstack.backbones import load_backbone
    from rewardstack.data.encode import Encoder, encode_pairs
    from rewardstack.data.load import load_preferences

    train_pairs, train_report = load_preferences(data / "train.jsonl.gz", skip_invalid=True)
    test_pairs, test_report = load_preferences(data / "test.jsonl.gz", skip_invalid=True)
    train_pairs = train_pairs[:pairs]
    backbone, tokenizer = load_backbone("smollm2-135m")
    encoder = Encoder(tokenizer, max_length)
    train_enc, test_enc = encode_pairs(encoder, train_pairs), encode_pairs(encoder, test_pairs)
    untruncated = Encoder(tokenizer, 10**6)
    too_long = sum(len(c) > max_length or len(r) > max_length for c, r in zip(*_ids(encode_pairs(untruncated, train_pairs))))
    rows = [{"prompt": list(p.prompt), "chosen": p.chosen, "rejected": p.rejected} for p in train_pairs]
    (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (work / "ids.json").write_text(json.dumps({"train": _ids(train_enc), "test": _ids(test_enc)}))
    return {
        "train_rows": f"first {pairs} valid pairs of hh_rlhf_harmless/train ({sum(train_report.skipped.values())} invalid rows in the file skipped)",
        "test_rows": f"all {len(test_pairs)} valid pairs of hh_rlhf_harmless/test ({sum(test_report.skipped.values())} invalid skipped)",
        "train_truncated": train_enc.truncated,
        "test_truncated": test_enc.truncated,
        "pairs_trl_would_drop_untokenised": too_long,
        "train_tokens": sum(train_enc.tokens(i) for i in range(len(train_enc))),
        "parameters": sum(p.numel() for p in backbone.parameters()),
    }


def _ids(encoded):
    return [e.ids for e in encoded.chosen], [e.ids for e in encoded.rejected]


def padded_scores(forward, pad_id: int, sequences: list[list[int]], batch_size: int = 16) -> np.ndarray:
    from rewardstack.data.encode import length_batches, pad_right

    out = np.empty(len(sequences))
    with torch.no_grad():
        for batch in length_batches([len(s) for s in sequences], batch_size):
            ids, mask = pad_right([sequences[i] for i in batch], pad_id)
            out[batch] = forward(ids, mask).double().numpy()
    return out


def run_rewardstack(work: Path, max_length: int, variant: str, device: str, bf16: bool) -> dict:
    from rewardstack.config import ComputeConfig, TrainConfig
    from rewardstack.data.encode import Encoded
    from rewardstack.data.load import Columns
    from rewardstack.model import RewardModel
    from rewardstack.training import train

    compute = ComputeConfig(device=device, bf16=bf16, share_prompts="share" in variant, pack_tokens=2 * max_length if "pack" in variant else 0)
    config = TrainConfig(model="smollm2-135m", max_length=max_length, lora_r=LORA_R, lora_alpha=LORA_ALPHA,
                         batch_size=BATCH, micro_batch_size=BATCH, learning_rate=LR, warmup_ratio=0.0,
                         seed=SEED, columns=Columns(), compute=compute)
    _, summary = train(config, str(work / "train.jsonl"), output_dir=work / f"rewardstack-{variant}")
    seconds = summary["train_seconds"]  # the training loop alone, like TRL's trainer.train()

    model = RewardModel.from_pretrained(work / f"rewardstack-{variant}" / "model").use(compute)
    return {"train_seconds": seconds, "score": lambda sequences: model.rewards([Encoded(tuple(s), ()) for s in sequences])}


def run_trl(work: Path, max_length: int, device: str, bf16: bool) -> dict:
    from datasets import Dataset
    from peft import LoraConfig, TaskType
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from rewardstack.backbones import EMBEDDED, rewardstack_home

    path = rewardstack_home() / "backbones" / EMBEDDED
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    chosen, rejected = json.loads((work / "ids.json").read_text())["train"]
    dataset = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    args = RewardConfig(
        output_dir=str(work / "trl-run"), use_cpu=device == "cpu", bf16=bf16, per_device_train_batch_size=BATCH,
        num_train_epochs=1, learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, max_length=max_length,
        gradient_checkpointing=False, save_strategy="no", report_to=[], logging_steps=8, seed=SEED,
    )
    lora = LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules="all-linear", task_type=TaskType.SEQ_CLS)
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trained = trainer.model.eval()
    forward = lambda ids, mask: trained(input_ids=ids.to(trained.device), attention_mask=mask.to(trained.device)).logits[:, 0].float().cpu()  # noqa: E731
    return {"train_seconds": seconds, "score": lambda sequences: padded_scores(forward, tokenizer.pad_token_id, sequences)}


def child(tool: str, work: Path, max_length: int, test_pairs: int | None, device: str, bf16: bool) -> None:
    from rewardstack.metrics import pairwise_metrics

    torch.manual_seed(SEED)
    result = run_trl(work, max_length, device, bf16) if tool == "trl" else run_rewardstack(work, max_length, tool, device, bf16)
    train_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    chosen, rejected = json.loads((work / "ids.json").read_text())["test"]
    chosen, rejected = chosen[:test_pairs], rejected[:test_pairs]
    rewards = result["score"](chosen + rejected)
    metrics = pairwise_metrics(rewards[: len(chosen)], rewards[len(chosen) :])
    out = {"train_seconds": result["train_seconds"], "peak_rss_mib_training": train_rss, "peak_gpu_mib": gpu_peak, "test": metrics}
    (work / f"{tool}.json").write_text(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--test-pairs", type=int, help="score only the first N test pairs (default: all)")
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.jsonl.gz and test.jsonl.gz (default: %(default)s)")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast in both tools (for GPUs)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak, for MFU (H100/H200 SXM: 989)")
    parser.add_argument("--child", choices=VARIANTS)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.work, args.max_length, args.test_pairs, args.device, args.bf16)
        return
    if not args.data.exists():
        sys.exit(f"{args.data} is absent: this benchmark needs the shared data folder beside the checkout (or --data)")
    work = Path(tempfile.mkdtemp(prefix="bench-trl-"))
    info = prepare(work, args.data, args.pairs, args.max_length)
    print(json.dumps(info, indent=2))
    results = {}
    for tool in args.variants:
        command = [sys.executable, __file__, "--child", tool, "--work", str(work), "--max-length", str(args.max_length), "--device", args.device]
        command += ["--bf16"] if args.bf16 else []
        if subprocess.run(command + (["--test-pairs", str(args.test_pairs)] if args.test_pairs else [])).returncode:
            print(f"{tool}: failed (its error is above); the table leaves it out", flush=True)
            continue
        results[tool] = json.loads((work / f"{tool}.json").read_text())
        results[tool]["tokens_per_second"] = info["train_tokens"] / results[tool]["train_seconds"]
    trl = results.get("trl")
    print(f"\n{'':<14}{'train s':>9}{'tokens/s':>10}{'peak RSS MiB':>14}{'test acc':>10}{'test NLL':>10}{'test ECE':>10}"
          + ("  speed/TRL  memory/TRL" if trl else ""))
    for name, r in results.items():
        t = r["test"]
        ratios = f"{r['tokens_per_second'] / trl['tokens_per_second']:>10.2f}x{r['peak_rss_mib_training'] / trl['peak_rss_mib_training']:>11.2f}x" if trl else ""
        gpu = ""
        if r.get("peak_gpu_mib"):
            mfu = 6 * info["parameters"] * r["tokens_per_second"] / (args.peak_tflops * 1e12)
            gpu = f"  GPU peak {r['peak_gpu_mib']:.0f} MiB, MFU {100 * mfu:.2f} %"
        print(f"{name:<14}{r['train_seconds']:>9.1f}{r['tokens_per_second']:>10.1f}{r['peak_rss_mib_training']:>14.0f}"
              f"{t['accuracy']:>10.3f}{t['nll']:>10.3f}{t['ece']:>10.3f}{ratios}{gpu}")
    (work / "results.json").write_text(json.dumps({"info": info, "results": results}, indent=2))
    print(f"details: {work / 'results.json'}")


if __name__ == "__main__":
    main()
