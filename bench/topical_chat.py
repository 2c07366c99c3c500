"""Hierarchical rewards (ALaRM) on topical_chat: how well does each combination mode rank responses
against the human `overall` rating?

Rows: 60 dialogues × 6 responses with human ratings. Split by dialogue: dialogues whose sha256 of the
history starts with a byte < 256 · --train-share train the regressors, the rest are held out.
Regressors: ridge regression on frozen SmolLM2-135M-Instruct features (mean of the last hidden states of
the chat-rendered turn `Fact: … Conversation: …` → response), features and ratings centred within each
dialogue (only the ranking of one dialogue's responses matters), one per aspect (understandability,
naturalness, coherence, engagingness, groundedness) and one for `overall` (the holistic reward); the
ridge penalty is chosen by leave-one-dialogue-out error on the training dialogues.
Every reward is z-scored on the training rows. Aspect selection: ALaRM's inconsistency rate against the
holistic reward over all within-dialogue response pairs of the training rows (kept when ≤ 0.5).
Metrics on held-out dialogues, over within-dialogue pairs whose human overall differs: pairwise accuracy
(a model tie counts ½) and Kendall's τ-b per dialogue, averaged. The human aspect ratings themselves are
also combined, as the upper bound of perfect aspect rewards.

    python bench/topical_chat.py [--train-share 0.67]
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from rewardstack.backbones import load_backbone
from rewardstack.data.load import read_rows
from rewardstack.metrics import pairwise_metrics
from rewardstack.sources.combine import combine_hierarchy
from rewardstack.sources.select import aspect_consistency

from common import DATA

ASPECTS = ("understandability", "naturalness", "coherence", "engagingness", "groundedness")
MODES = ("holistic", "aspects", "weighted_sum", "hierarchical")
PENALTIES = tuple(10.0 ** k for k in range(-1, 7))


@torch.no_grad()
def features(rows: list[dict]) -> np.ndarray:
    """Mean last-layer hidden state of each rendered (fact + history, response) turn."""
    model, tokenizer = load_backbone("smollm2-135m")
    out = []
    for row in rows:
        messages = [{"role": "user", "content": f"Fact: {row['context']}\n\nConversation: {row['source']}"},
                    {"role": "assistant", "content": row["system_output"]}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_tensors="pt")
        hidden = model(input_ids=ids["input_ids"][:, -512:], output_hidden_states=True).hidden_states[-1][0]
        out.append(hidden.mean(dim=0).double().numpy())
    return np.stack(out)


def centred(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """values minus their dialogue's mean: what differs between the responses to one dialogue."""
    means = {g: values[groups == g].mean(axis=0) for g in np.unique(groups)}
    return values - np.stack([means[g] for g in groups])


def ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """w minimising |[x 1] w − y|² + penalty·|w without bias|² (features standardised by the caller)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    regulariser = penalty * np.eye(design.shape[1])
    regulariser[-1, -1] = 0.0
    return np.linalg.solve(design.T @ design + regulariser, design.T @ y)


def fit_regressor(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, float]:
    """Ridge weights with the penalty of least leave-one-group-out squared error."""
    def cv_error(penalty: float) -> float:
        errors = []
        for g in np.unique(groups):
            held = groups == g
            w = ridge(x[~held], y[~held], penalty)
            errors.append(np.square(np.hstack([x[held], np.ones((held.sum(), 1))]) @ w - y[held]))
        return float(np.mean(np.concatenate(errors)))

    best = min(PENALTIES, key=cv_error)
    return ridge(x, y, best), best


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> float:
    """τ_b = (C − D) / √((C + D + T_a)(C + D + T_b)), T_a / T_b: pairs tied in b only / in a only."""
    concordant = discordant = tied_a = tied_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        if da == 0 and db == 0:
            continue
        if da == 0:
            tied_a += 1
        elif db == 0:
            tied_b += 1
        elif da == db:
            concordant += 1
        else:
            discordant += 1
    denominator = np.sqrt((concordant + discordant + tied_a) * (concordant + discordant + tied_b))
    return (concordant - discordant) / denominator if denominator else 0.0


def within_pairs(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(pairs, 2): every within-group pair of rows."""
    return np.array([[values[i], values[j]] for g in np.unique(groups) for i, j in itertools.combinations(np.flatnonzero(groups == g), 2)])


def rank_metrics(scores: np.ndarray, human: np.ndarray, groups: np.ndarray) -> tuple[float, float, int]:
    """Pairwise accuracy (model ties ½) over within-group pairs with different human ratings, mean τ_b
    per group, and the number of pairs."""
    s, h = within_pairs(scores, groups), within_pairs(human, groups)
    differ = h[:, 0] != h[:, 1]
    first_better = h[differ, 0] > h[differ, 1]
    chosen = np.where(first_better, s[differ, 0], s[differ, 1])
    rejected = np.where(first_better, s[differ, 1], s[differ, 0])
    taus = [kendall_tau_b(scores[groups == g], human[groups == g]) for g in np.unique(groups)]
    return pairwise_metrics(chosen, rejected)["accuracy"], float(np.mean(taus)), int(differ.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-share", type=float, default=0.67)
    parser.add_argument("--threshold", type=float, default=0.0, help="τ of the hierarchical mode (z-scored holistic)")
    parser.add_argument("--aspect-weight", type=float, default=0.2, help="w_i of every aspect (w_h = 1)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="the features are cached here")
    args = parser.parse_args()

    rows = [row for _, row in read_rows(DATA / "topical_chat" / "ratings.jsonl.gz")]
    dialogues = sorted({row["source"] for row in rows})
    group_of = {d: i for i, d in enumerate(dialogues)}
    groups = np.array([group_of[row["source"]] for row in rows])
    train = np.array([hashlib.sha256(row["source"].encode()).digest()[0] < 256 * args.train_share for row in rows])
    started = time.perf_counter()
    cache = args.out / "topical_chat_features.npy"
    if not cache.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        np.save(cache, features(rows))
    x = centred(np.load(cache), groups)  # rankings are within a dialogue: fit on within-dialogue differences
    x = x / (x[train].std(0) + 1e-8)
    human = {name: np.array([row["scores"][name] for row in rows]) for name in (*ASPECTS, "overall")}
    print(f"{len(rows)} rows, {len(dialogues)} dialogues: {len(np.unique(groups[train]))} train / {len(np.unique(groups[~train]))} held out; "
          f"features in {time.perf_counter() - started:.0f} s")

    predicted, lines = {}, []
    for name in (*ASPECTS, "overall"):
        w, penalty = fit_regressor(x[train], centred(human[name], groups)[train], groups[train])
        predicted[name] = np.hstack([x, np.ones((len(x), 1))]) @ w
        correlation = np.corrcoef(predicted[name][~train], centred(human[name], groups)[~train])[0, 1]
        lines.append(f"  {name:<18} penalty {penalty:>7g}   held-out Pearson r with its own rating (within dialogue) {correlation:.3f}")
    print("regressors:\n" + "\n".join(lines))

    for label, aspect_source in (("regressors", predicted), ("human aspect ratings", human)):
        z = {name: (aspect_source[name] - aspect_source[name][train].mean()) / aspect_source[name][train].std() for name in ASPECTS}
        holistic = (predicted["overall"] - predicted["overall"][train].mean()) / predicted["overall"][train].std()
        consistency = {name: aspect_consistency(within_pairs(holistic[train], groups[train]), within_pairs(z[name][train], groups[train])) for name in ASPECTS}
        kept = [name for name in ASPECTS if consistency[name]["inconsistency"] <= 0.5]
        print(f"\naspects from {label}: inconsistency with the holistic regressor on training pairs: "
              + ", ".join(f"{name} {c['inconsistency']:.3f}" for name, c in consistency.items()) + f"; kept: {kept or 'none'}")
        print(f"{'mode':<14}{'aspects':<12}{'pair acc':>10}{'Kendall τ':>11}{'pairs':>7}")
        for chosen, aspect_label in ((kept, "selected"), (list(ASPECTS), "all")):
            if not chosen:
                continue
            for mode in MODES:
                if mode == "holistic" and aspect_label == "all":
                    continue
                reward, _ = combine_hierarchy(holistic, np.stack([z[a] for a in chosen]), mode, args.threshold, 1.0, [args.aspect_weight] * len(chosen))
                accuracy, tau, pairs = rank_metrics(reward[~train], human["overall"][~train], groups[~train])
                print(f"{mode:<14}{aspect_label if mode != 'holistic' else '-':<12}{accuracy:>10.3f}{tau:>11.3f}{pairs:>7}")
    for name in ASPECTS:
        accuracy, tau, _ = rank_metrics(predicted[name][~train], human["overall"][~train], groups[~train])
        print(f"single aspect regressor {name:<18}{accuracy:>10.3f}{tau:>11.3f}")


if __name__ == "__main__":
    main()
