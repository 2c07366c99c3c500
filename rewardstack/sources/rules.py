"""Rule rewards: Python functions of (prompt, response), user-given as `module:function` or built in.

Built-ins: `answer` (1 when the response's final answer matches the reference answer of its prompt, read
from a file; 0 otherwise), `length` (words or characters of the response) and `regex` (1 when a pattern
is found in the response).
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data.encode import as_messages
from ..data.load import Message
from ..errors import UserError
from ..gold import answer_is_correct
from ..scores import RewardScores
from .kinds import Place, register_kind, required

RuleFunction = Callable[[str, str], float]


def prompt_text(prompt: str | Sequence[Message]) -> str:
    """A prompt as one string: its messages' contents joined by blank lines."""
    return "\n\n".join(message["content"] for message in as_messages(prompt))


class Rule:
    """A reward source from a function f(prompt_text, response) -> float. An exception, or a result that is
    not a finite number, is a UserError naming the rule, its node in the tree (`where`) and the row (1-based)."""

    def __init__(self, function: RuleFunction, name: str, where: str = "rule"):
        self.function, self.name, self.where = function, name, where

    def score(self, prompts, responses, batch_size: int = 16) -> RewardScores:
        label = f"{self.where} (rule {self.name})"
        if len(prompts) != len(responses):
            raise UserError(f"{label}: {len(prompts)} prompts but {len(responses)} responses")
        values = np.empty(len(responses))
        for row, (prompt, response) in enumerate(zip(prompts, responses), 1):
            try:
                value = self.function(prompt_text(prompt), response)
            except UserError:
                raise
            except Exception as err:  # the user's code: report it, with the row, as their error
                raise UserError(f"{label}: row {row} raised {type(err).__name__}: {err}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{label}: row {row} gave {value!r}, not a finite number")
            values[row - 1] = value
        return RewardScores(mean=values)


def import_function(spec: str, search_dir: str | Path | None = None, allowed_modules: Sequence[str] = ()) -> RuleFunction:
    """The function named by 'package.module:function'. The module must be a file beside the YAML tree
    (in `search_dir`), or be in `allowed_modules` (a name there allows its submodules too): a tree cannot
    make rewardstack import, and call, anything else that is importable."""
    module_name, _, function_name = spec.partition(":")
    if not module_name or not function_name:
        raise UserError(f"rule {spec!r}: give it as module:function")
    allowed = any(module_name == name or module_name.startswith(name + ".") for name in allowed_modules)
    beside = _module_beside(module_name, search_dir)
    if not allowed and beside is None:
        raise UserError(f"rule {spec!r}: module {module_name!r} is neither a file beside the tree nor allowed; "
                        f"allow it with --allow-rule-module {module_name.split('.')[0]} if you trust it")
    if beside is not None:
        sys.path.insert(0, str(search_dir))
    try:
        module = importlib.import_module(module_name)
        function = getattr(module, function_name)
    except Exception as err:  # the module's own import-time errors included
        raise UserError(f"rule {spec!r}: cannot load it ({type(err).__name__}: {err})") from None
    finally:
        if beside is not None:
            sys.path.remove(str(search_dir))
    if beside is not None and not allowed and Path(getattr(module, "__file__", "") or "").resolve() != beside:
        raise UserError(f"rule {spec!r}: {module_name!r} is already imported from {getattr(module, '__file__', None)}, not from {beside}; "
                        "rename the file beside the tree")
    if not callable(function):
        raise UserError(f"rule {spec!r}: not a function")
    return function


def _module_beside(module_name: str, search_dir: str | Path | None) -> Path | None:
    """The file of `module_name` in `search_dir` (module.py or package/__init__.py), or None."""
    if search_dir is None:
        return None
    base = Path(search_dir).joinpath(*module_name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def length_rule(unit: str = "words") -> RuleFunction:
    """Length of the response in `unit`: words (whitespace-separated) or characters."""
    if unit not in ("words", "characters"):
        raise UserError(f"rule length: unit must be words or characters, not {unit!r}")
    return (lambda prompt, response: float(len(response.split()))) if unit == "words" else (lambda prompt, response: float(len(response)))


def regex_rule(pattern: str, ignore_case: bool = False) -> RuleFunction:
    """1.0 when `pattern` is found in the response, else 0.0."""
    try:
        compiled = re.compile(pattern, re.IGNORECASE if ignore_case else 0)
    except re.error as err:
        raise UserError(f"rule regex: bad pattern {pattern!r} ({err})") from None
    return lambda prompt, response: float(compiled.search(response) is not None)


def answer_rule(answers: str | Path, prompt_key: str = "prompt", answer_key: str = "answer") -> RuleFunction:
    """1.0 when the response's final answer equals its prompt's reference answer (gold.answer_is_correct),
    else 0.0; references come from a file of prompt/answer rows. A prompt without a reference is an error."""
    from ..data.pools import load_prompts

    rows, _ = load_prompts(answers, prompt_key, answer_key)
    reference = {prompt_text(row.prompt): row.answer for row in rows if row.answer is not None}

    def correct(prompt: str, response: str) -> float:
        if prompt not in reference:
            raise UserError(f"rule answer: no reference answer in {answers} for the prompt {prompt[:80]!r}")
        return float(answer_is_correct(response, reference[prompt]))

    return correct


@register_kind("rule")
def _build_rule(node: dict, place: Place) -> Rule:
    """{function: "module:function"} or {builtin: length|regex|answer, ...}."""
    where = place.where
    if "function" in node:
        try:
            return Rule(import_function(str(node["function"]), place.base_dir, place.allowed), str(node["function"]), where)
        except UserError as err:
            raise UserError(f"{where}: {err}") from None
    builtin = required(node, "builtin", where)
    if builtin == "length":
        return Rule(length_rule(node.get("unit", "words")), "length", where)
    if builtin == "regex":
        return Rule(regex_rule(required(node, "pattern", where), bool(node.get("ignore_case", False))), "regex", where)
    if builtin == "answer":
        answers = place.base_dir / required(node, "answers", where)
        return Rule(answer_rule(answers, node.get("prompt_key", "prompt"), node.get("answer_key", "answer")), "answer", where)
    raise UserError(f"{where}.builtin: {builtin!r} is not one of answer, length, regex")
