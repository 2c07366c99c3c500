"""A reward source from a model directory or a YAML tree, and z-score calibration of the tree's nodes.

Nodes (paths are relative to the YAML file):
    {kind: model, path: DIR_OR_HUB_ID, posterior: true, max_length: N, reduce: {index: K} | {weights: [...]}}
    {kind: rule, function: "module:function"} (a module beside the YAML file, or one the caller allows)  or  {kind: rule, builtin: answer, answers: FILE}
        | {kind: rule, builtin: length, unit: words|characters} | {kind: rule, builtin: regex, pattern: P, ignore_case: false}
    {kind: remote, url: URL, protocol: rewardstack|openrlhf|classify, timeout: 60, batch_size: 64, api_key_env: NAME,
     path: ROUTE, model: NAME, tokenizer: FOLDER_OR_ID}
    {kind: ensemble, combine: mean|min|uwo:λ|weighted, weights: [...], members: [{name: N, source: NODE}, ...]}
    {kind: hierarchical, mode: hierarchical|holistic|aspects|weighted_sum, threshold: τ, holistic_weight: w_h,
     holistic: NODE, aspects: [{name: N, weight: w, source: NODE}, ...]}
    {kind: bandit, algorithm: linucb|thompson|exp3|epsilon_greedy, params: {alpha: 1.0}, per: instance|batch,
     context: {kind: policy|minilm, model: smollm2-135m, dim: 64}, seed: 0, state: FILE, members: [{name: N, source: NODE}, ...]}
Any node may carry `normalize: {mean: μ, std: σ}` (fixed) or `normalize: calibrate`, which
`calibrate_tree` replaces by μ, σ of the node's rewards on calibration rows.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..config import ComputeConfig
from ..data.load import HUB_ID
from ..errors import UserError
from ..laser import selector  # noqa: F401  (importing a kind's module registers it)
from . import combine, remote, rules  # noqa: F401
from .combine import Normalized
from .kinds import BUILDERS, Place, number, register_kind, required


def load_source(spec: str | Path, allowed_modules: Sequence[str] = (), compute: ComputeConfig | None = None):
    """A reward source from a trained model directory or a YAML file describing a source tree; rules may
    import modules beside the file and those in `allowed_modules` (see rules.import_function). Every
    reward model in it runs as `compute` says (default: ComputeConfig())."""
    path = Path(spec)
    if path.is_dir() or (not path.exists() and HUB_ID.fullmatch(str(spec)) and path.suffix not in (".yaml", ".yml")):
        source = load_model(spec)
    else:
        source = build_source(read_tree(path), path.parent, "source", allowed_modules)
    for model in reward_models(source):
        model.use(compute or ComputeConfig())
    return source


def load_model(spec: str | Path, where: str | None = None, **options):
    """A reward model from a folder (rewardstack's own, or a Transformers sequence classifier) or a Hugging
    Face Hub id of a sequence classifier (from the local cache unless downloads are on). `options` go to
    the sequence classifier (max_length, reduce)."""
    from ..model import CONFIG_FILE, RewardModel
    from .hf import HFRewardModel, is_sequence_classifier

    path = Path(spec)
    label = f"{where}.path: " if where else ""
    if (path / CONFIG_FILE).is_file():
        return RewardModel.from_pretrained(path)
    if path.is_dir() and not is_sequence_classifier(path):
        raise UserError(f"{label}{path}: not a reward model folder (no {CONFIG_FILE}, and no config.json of a sequence classifier)")
    if not path.is_dir() and not HUB_ID.fullmatch(str(spec)):
        raise UserError(f"{label}{spec}: no such model folder (nor a Hugging Face id owner/name)")
    return HFRewardModel.from_pretrained(spec, **options)


def read_tree(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: neither a model directory nor a YAML file")
    try:
        node = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(node, dict):
        raise UserError(f"{path}: a source tree is a mapping with a `kind`")
    _check_acyclic(node, "source", set(), path)
    return node


def _check_acyclic(value: Any, where: str, above: set[int], path: Path) -> None:
    """A YAML alias may repeat a node, but not one that contains it (the tree would never end)."""
    if not isinstance(value, (dict, list)):
        return
    if id(value) in above:
        raise UserError(f"{path}: {where} refers to a node that contains it (a YAML alias to itself)")
    inside = above | {id(value)}
    for key, child in (value.items() if isinstance(value, dict) else enumerate(value)):
        _check_acyclic(child, f"{where}.{key}" if isinstance(value, dict) else f"{where}[{key}]", inside, path)


def build_source(node: Any, base_dir: str | Path = ".", where: str = "source", allowed_modules: Sequence[str] = ()):
    """The source a tree node describes (module docstring); errors name the node's place in the tree.
    Rules may import modules beside `base_dir` and those in `allowed_modules`."""
    if not isinstance(node, dict) or node.get("kind") not in BUILDERS:
        raise UserError(f"{where}: a node needs `kind`, one of {', '.join(BUILDERS)}")
    source = BUILDERS[node["kind"]](node, Place(Path(base_dir), where, tuple(allowed_modules)))
    normalize = node.get("normalize")
    if normalize is None:
        return source
    if normalize == "calibrate":
        raise UserError(f"{where}: `normalize: calibrate` is not fitted yet: run `rewardstack compose calibrate` on this file")
    if not isinstance(normalize, dict) or not {"mean", "std"} <= normalize.keys():
        raise UserError(f"{where}.normalize: give {{mean: μ, std: σ}} or `calibrate`")
    return Normalized(source, number(normalize, "mean", f"{where}.normalize"), number(normalize, "std", f"{where}.normalize"))


@register_kind("model")
def _build_model(node: dict, place: Place):
    spec = str(required(node, "path", place.where))
    local = place.base_dir / spec
    options = {key: node[key] for key in ("max_length", "reduce") if key in node}
    model = load_model(local if local.exists() or not HUB_ID.fullmatch(spec) else spec, place.where, **options)
    if node.get("posterior", True) is False:  # MAP rewards only: about 3x faster than with std
        model.posterior = None
    return model


def reward_models(source) -> list:
    """The reward models (RewardModel and HFRewardModel) in a source tree, depth first through the
    composite sources' `children()` (holistic before aspects, members in order)."""
    from ..model import RewardModel
    from .hf import HFRewardModel

    if isinstance(source, (RewardModel, HFRewardModel)):
        return [source]
    return [model for child in getattr(source, "children", list)() for model in reward_models(child)]


def calibrate_tree(node: dict, base_dir: str | Path, prompts: Sequence, responses: Sequence[str], batch_size: int = 16, data_name: str = "",
                   allowed_modules: Sequence[str] = ()) -> dict:
    """A copy of the tree in which every `normalize: calibrate` node (and every node calibrated before)
    gets μ, σ (population std) of its rewards on the given rows; children first, so a parent sees its
    children normalised."""
    if len(responses) < 2:
        raise UserError("calibrate: needs at least two rows")
    tree = copy.deepcopy(node)

    def visit(current: dict, where: str) -> None:
        for key, child in _children(current, where):
            visit(child, key)
        normalize = current.get("normalize")
        if normalize == "calibrate" or (isinstance(normalize, dict) and "calibrated_on" in normalize):
            rewards = build_source({k: v for k, v in current.items() if k != "normalize"}, base_dir, where, allowed_modules).score(prompts, responses, batch_size=batch_size).mean
            std = float(np.std(rewards))
            if std == 0:
                raise UserError(f"{where}: its rewards are all equal on the calibration rows, so they cannot be normalised")
            current["normalize"] = {"mean": float(np.mean(rewards)), "std": std, "calibrated_on": data_name, "rows": len(rewards)}

    visit(tree, "source")
    return tree


def _children(node: dict, where: str) -> list[tuple[str, dict]]:
    kind = node.get("kind")
    if kind in ("ensemble", "bandit"):
        return [(f"{where}.members[{i}].source", m["source"]) for i, m in enumerate(node.get("members") or []) if isinstance(m, dict) and isinstance(m.get("source"), dict)]
    if kind == "hierarchical":
        aspects = [(f"{where}.aspects[{i}].source", a["source"]) for i, a in enumerate(node.get("aspects") or []) if isinstance(a, dict) and isinstance(a.get("source"), dict)]
        return ([(f"{where}.holistic", node["holistic"])] if isinstance(node.get("holistic"), dict) else []) + aspects
    return []
