"""A reward source from a model directory or a YAML tree, and z-score calibration of the tree's nodes.

Nodes (paths are relative to the YAML file):
    {kind: model, path: DIR_OR_HUB_ID, posterior: true, max_length: N, reduce: {index: K} | {weights: [...]}}
    {kind: rule, function: "module:function"} (a module beside the YAML file, or one the caller allows)  or  {kind: rule, builtin: answer, answers: FILE}
        | {kind: rule, builtin: length, unit: words|characters} | {kind: rule, builtin: regex, pattern: P, ignore_case: false}
    {kind: remote, url: URL, protocol: rewardstack|openrlhf, timeout: 60, batch_size: 64, api_key_env: NAME}
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
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from ..data.load import HUB_ID
from ..errors import UserError
from .combine import Ensemble, Hierarchical, Normalized
from .remote import Remote
from .rules import Rule, answer_rule, import_function, length_rule, regex_rule

KINDS = ("model", "rule", "remote", "ensemble", "hierarchical", "bandit")


def load_source(spec: str | Path, allowed_modules: Sequence[str] = ()):
    """A reward source from a trained model directory or a YAML file describing a source tree; rules may
    import modules beside the file and those in `allowed_modules` (see rules.import_function)."""
    path = Path(spec)
    if path.is_dir() or (not path.exists() and HUB_ID.fullmatch(str(spec)) and path.suffix not in (".yaml", ".yml")):
        return load_model(spec)
    return build_source(read_tree(path), path.parent, "source", allowed_modules)


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
    source = _build_raw(node, Path(base_dir), where, tuple(allowed_modules))
    normalize = node.get("normalize")
    if normalize is None:
        return source
    if normalize == "calibrate":
        raise UserError(f"{where}: `normalize: calibrate` is not fitted yet: run `rewardstack compose calibrate` on this file")
    if not isinstance(normalize, dict) or not {"mean", "std"} <= normalize.keys():
        raise UserError(f"{where}.normalize: give {{mean: μ, std: σ}} or `calibrate`")
    return Normalized(source, _number(normalize, "mean", f"{where}.normalize"), _number(normalize, "std", f"{where}.normalize"))


def _build_raw(node: Any, base_dir: Path, where: str, allowed: tuple[str, ...]):
    if not isinstance(node, dict) or node.get("kind") not in KINDS:
        raise UserError(f"{where}: a node needs `kind`, one of {', '.join(KINDS)}")
    kind = node["kind"]
    if kind == "model":
        spec = str(_field(node, "path", where))
        local = base_dir / spec
        options = {key: node[key] for key in ("max_length", "reduce") if key in node}
        model = load_model(local if local.exists() or not HUB_ID.fullmatch(spec) else spec, where, **options)
        if node.get("posterior", True) is False:  # MAP rewards only: about 3x faster than with std
            model.posterior = None
        return model
    if kind == "rule":
        if "function" in node:
            try:
                return Rule(import_function(str(node["function"]), base_dir, allowed), str(node["function"]), where)
            except UserError as err:
                raise UserError(f"{where}: {err}") from None
        builtin = _field(node, "builtin", where)
        if builtin == "length":
            return Rule(length_rule(node.get("unit", "words")), "length", where)
        if builtin == "regex":
            return Rule(regex_rule(_field(node, "pattern", where), bool(node.get("ignore_case", False))), "regex", where)
        if builtin == "answer":
            return Rule(answer_rule(base_dir / _field(node, "answers", where), node.get("prompt_key", "prompt"), node.get("answer_key", "answer")), "answer", where)
        raise UserError(f"{where}.builtin: {builtin!r} is not one of answer, length, regex")
    if kind == "remote":
        return Remote(_field(node, "url", where), node.get("protocol", "rewardstack"), float(node.get("timeout", 60)), int(node.get("batch_size", 64)),
                      _api_key(node, where))
    if kind == "ensemble":
        return Ensemble(_members(node, base_dir, where, allowed), str(node.get("combine", "mean")), node.get("weights"))
    if kind == "bandit":
        from ..context import ContextEncoder
        from .bandit import BanditSelector

        context = node.get("context") or {}
        params = node.get("params") or {}
        if not isinstance(context, dict) or not isinstance(params, dict):
            raise UserError(f"{where}: `context` and `params` are mappings")
        encoder = ContextEncoder(str(context.get("kind", "policy")), str(context.get("model", "smollm2-135m")),
                                 context.get("dim", 64), int(node.get("seed", 0)))
        state = base_dir / node["state"] if node.get("state") else None
        return BanditSelector(_members(node, base_dir, where, allowed), encoder, str(node.get("algorithm", "linucb")), str(node.get("per", "instance")),
                              int(node.get("seed", 0)), state, **{k: _number(params, k, f"{where}.params") for k in params})
    holistic = _field(node, "holistic", where)
    _require_normalized(holistic, f"{where}.holistic")
    aspects = {}
    for i, aspect in enumerate(node.get("aspects") or []):
        place = f"{where}.aspects[{i}]"
        name = str(_field(aspect, "name", place))
        _require_normalized(_field(aspect, "source", place), f"{place}.source")
        aspects[name] = (build_source(aspect["source"], base_dir, f"{place}.source", allowed), _number(aspect, "weight", place, default=1.0))
    return Hierarchical(
        build_source(holistic, base_dir, f"{where}.holistic", allowed), aspects, str(node.get("mode", "hierarchical")),
        _number(node, "threshold", where, default=0.0), _number(node, "holistic_weight", where, default=1.0),
    )


def _api_key(node: dict, where: str) -> str | None:
    """A remote node's API key, from the environment variable its `api_key_env` names (never the YAML)."""
    if "api_key" in node:
        raise UserError(f"{where}: do not write an API key into the tree; put it in an environment variable and name that with `api_key_env`")
    name = node.get("api_key_env")
    if name is None:
        return None
    if not os.environ.get(str(name)):
        raise UserError(f"{where}.api_key_env: the environment variable {name} is not set")
    return os.environ[str(name)]


def _members(node: dict, base_dir: Path, where: str, allowed: tuple[str, ...]) -> dict:
    members = {}
    for i, member in enumerate(_list(node, "members", where)):
        name = str(member.get("name", f"member{i}")) if isinstance(member, dict) else f"member{i}"
        if name in members:
            raise UserError(f"{where}.members[{i}]: the name {name!r} is used twice")
        members[name] = build_source(_field(member, "source", f"{where}.members[{i}]"), base_dir, f"{where}.members[{i}].source", allowed)
    return members


def reward_models(source) -> list:
    """The reward models (RewardModel and HFRewardModel) in a source tree, depth first (holistic before
    aspects, members in order)."""
    from ..model import RewardModel
    from .bandit import BanditSelector
    from .hf import HFRewardModel

    if isinstance(source, (RewardModel, HFRewardModel)):
        return [source]
    if isinstance(source, Normalized):
        return reward_models(source.source)
    if isinstance(source, (Ensemble, BanditSelector)):
        return [m for member in source.members.values() for m in reward_models(member)]
    if isinstance(source, Hierarchical):
        return reward_models(source.holistic) + [m for aspect, _ in source.aspects.values() for m in reward_models(aspect)]
    return []


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


def _require_normalized(node: Any, where: str) -> None:
    if isinstance(node, dict) and node.get("normalize") is None:
        raise UserError(f"{where}: hierarchical rewards combine normalised sources: add `normalize: calibrate` "
                        "(then run `rewardstack compose calibrate`) or `normalize: {mean: 0, std: 1}` to keep raw values")


def _field(node: Any, key: str, where: str) -> Any:
    if not isinstance(node, dict) or node.get(key) is None:
        raise UserError(f"{where}: missing `{key}`")
    return node[key]


def _list(node: dict, key: str, where: str) -> list:
    value = _field(node, key, where)
    if not isinstance(value, list) or not value:
        raise UserError(f"{where}.{key}: give a non-empty list")
    return value


def _number(node: dict, key: str, where: str, default: float | None = None) -> float:
    value = node.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where}.{key}: expected a number, got {value!r}")
    return float(value)
