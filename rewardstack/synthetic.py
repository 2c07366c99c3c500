"""Generated preference data with a verifiable answer: templated arithmetic word problems.

The chosen response works the problem out correctly. The rejected one fails in one of three ways, kept
in the `subset` column so evaluation shows which failures a reward model catches:
- `wrong result`: the right operands, a wrong result (the reward model must do the arithmetic);
- `wrong operands`: a number not in the question, worked out consistently (it must compare with the prompt);
- `evasive`: no answer at all.
Used by the tests; `word_problems` gives the demo prompts with small numbers for a policy to answer;
`aspect_pools` and `mixed_task_pools` give best-of-n pools with exact gold for the claims harness
(bench/claims.py): answers with style for hierarchical rewards, and three tasks that need different
rewards for choosing one per prompt.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .files import write_text

TEMPLATES = [
    ("{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?", "+"),
    ("{name} had {a} {item}s and gave away {b}. How many {item}s are left?", "-"),
    ("A box holds {a} {item}s. How many {item}s are in {b} boxes?", "*"),
]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo"]
ITEMS = ["apple", "book", "coin", "marble", "pencil", "sticker"]
# Shifted worlds for testing out of distribution: the same operations asked in other words, and division.
OTHER_TEMPLATES = [
    ("After buying {b} more {item}s, how many {item}s does {name} own if {name} started with {a}?", "+"),
    ("{name} started with {a} {item}s and lost {b} of them. What is the count now?", "-"),
    ("Each of {b} bags contains {a} {item}s. What is the total number of {item}s?", "*"),
]
DIVISION_TEMPLATES = [("{name} splits {a} {item}s equally into {b} groups. How many {item}s are in each group?", "/")]
OPERATIONS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
WORLDS = {  # name: arithmetic_problem's keyword arguments
    "base": {},
    "larger numbers": {"max_a": 400, "max_b": 99},
    "other templates": {"templates": OTHER_TEMPLATES},
    "division": {"templates": DIVISION_TEMPLATES, "ops": "/"},
}


def arithmetic_problem(rng: random.Random, max_a: int = 40, max_b: int = 12, ops: str = "+-*",
                       templates: list[tuple[str, str]] = TEMPLATES) -> tuple[str, int, str]:
    """(question, answer, worked expression) for one templated problem with a in 2…max_a, b in 2…max_b
    (swapped for a subtraction so the result is ≥ 0; for a division a·b is divided by b, so the answer is a)."""
    template, op = rng.choice([t for t in templates if t[1] in ops])
    a, b = rng.randint(2, max_a), rng.randint(2, max_b)
    if op == "-" and b > a:
        a, b = b, a
    if op == "/":
        a *= b
    answer = OPERATIONS[op](a, b)
    question = template.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b)
    return question, answer, f"{a} {op} {b}"


EVASIVE = [
    "It is hard to say without more details.",
    "You could count them yourself to be sure.",
    "That depends on how you look at it.",
]
FAILURES = ["wrong result", "wrong operands", "evasive"]


def arithmetic_pairs(count: int, seed: int = 0, world: str = "base") -> list[dict]:
    """`count` rows {prompt, chosen, rejected, subset} of one of the WORLDS; the failure kinds take turns."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        question, answer, expression = arithmetic_problem(rng, **WORLDS[world])
        a, op, b = expression.split()
        failure = FAILURES[i % len(FAILURES)]
        if failure == "wrong result":
            wrong = answer + rng.choice([-10, -2, -1, 1, 2, 10])
            rejected = f"{expression} = {wrong}. The answer is {wrong}."
        elif failure == "wrong operands":
            other = int(a) + (int(b) * rng.choice([1, 2, 3]) if op == "/" else rng.choice([-3, -1, 1, 3, 7]))
            result = OPERATIONS[op](other, int(b))
            rejected = f"{other} {op} {b} = {result}. The answer is {result}."
        else:
            rejected = rng.choice(EVASIVE)
        rows.append(
            {"prompt": question, "chosen": f"{expression} = {answer}. The answer is {answer}.", "rejected": rejected, "subset": failure}
        )
    return rows


WORD_PROBLEM_INSTRUCTION = " Reply in one short sentence."


def word_problems(count: int, seed: int = 0, largest: int = 9) -> list[dict]:
    """`count` rows {id, prompt, answer}: additions and subtractions of numbers 2…largest (at 9,
    SmolLM2-135M-Instruct answers about 30 % of its samples correctly), asking for a one-sentence reply."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        question, answer, _ = arithmetic_problem(rng, max_a=largest, max_b=largest, ops="+-")
        rows.append({"id": f"problem {i}", "prompt": question + WORD_PROBLEM_INSTRUCTION, "answer": str(answer)})
    return rows


FILLERS = [
    "Let me think about this step by step before I answer.",
    "Good question, here is how I would work it out carefully.",
    "I will read the question once more and then do the sum.",
]
OPERATION_WORDS = {"+": "add", "-": "take away", "*": "multiply by", "/": "divide by"}


def candidate(rng: random.Random, expression: str, kind: str, verbose: bool = False, stated: bool = True,
              explained: bool = False, number_only: bool = False) -> str:
    """One response to a generated problem whose worked `expression` is "a op b". kind: correct, wrong
    result, wrong operands (as in arithmetic_pairs) or evasive (no number); verbose: a filler sentence
    first; stated: ends with "The answer is N."; explained: a sentence on the step before the equation;
    number_only: just the number."""
    if kind == "evasive":
        return rng.choice(EVASIVE)
    a, op, b = expression.split()
    if kind == "wrong operands":
        a = str(int(a) + (int(b) * rng.choice([1, 2, 3]) if op == "/" else rng.choice([1, 3, 7])))
    value = OPERATIONS[op](int(a), int(b)) + (rng.choice([-10, -2, -1, 1, 2, 10]) if kind == "wrong result" else 0)
    if number_only:
        return str(value)
    parts = [rng.choice(FILLERS)] if verbose else []
    if explained:
        parts.append(f"We start from {a} and {OPERATION_WORDS[op]} {b}.")
    parts.append(f"{a} {op} {b} = {value}.")
    if stated:
        parts.append(f"The answer is {value}.")
    return " ".join(parts)


ASPECT_GOLDS = ("gated", "additive")


def aspect_pools(count: int, size: int = 8, seed: int = 0, gold: str = "gated") -> list[dict]:
    """`count` best-of-n pools {id, prompt, responses, gold} of `size` responses to base-world problems,
    for hierarchical rewards: each response is correct (probability 0.4) or one of the failures, verbose
    or concise, and states "The answer is N." or not (an evasive one is concise and states nothing).
    With s = stated and c = concise (0 or 1), gold is
    - gated: correct · (0.5 + 0.25·s + 0.25·c): style counts only for a correct answer;
    - additive: 0.5·correct + 0.25·s + 0.25·c.
    The responses depend on `seed` alone, so the two golds describe the same pools."""
    if gold not in ASPECT_GOLDS:
        raise ValueError(f"aspect_pools: gold must be one of {ASPECT_GOLDS}, not {gold!r}")
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        question, _, expression = arithmetic_problem(rng)
        responses, golds = [], []
        for _ in range(size):
            kind = "correct" if rng.random() < 0.4 else rng.choice(FAILURES)
            verbose, stated = (rng.random() < 0.5 and kind != "evasive" for _ in range(2))  # an evasive reply has neither
            responses.append(candidate(rng, expression, kind, verbose, stated))
            correct, style = float(kind == "correct"), 0.25 * stated + 0.25 * (not verbose)
            golds.append(correct * (0.5 + style) if gold == "gated" else 0.5 * correct + style)
        rows.append({"id": f"problem {i}", "prompt": question, "responses": responses, "gold": golds})
    return rows


TASK_INSTRUCTIONS = {"plain": "", "number only": " Reply with the number only.", "explain": " Explain your step, then answer."}


def mixed_task_pools(per_task: int, size: int = 6, seed: int = 0) -> list[dict]:
    """Best-of-n pools {id, prompt, responses, gold, group} from three tasks on base-world problems, in
    turn, where different kinds of reward are right (for choosing a reward per prompt):
    - plain: the question; responses in arithmetic_pairs' form; gold = correct;
    - number only: "Reply with the number only."; gold = correct · (1 if the response is the bare number
      else 0.3);
    - explain: "Explain your step, then answer."; gold = correct · (1 if the step is explained else 0.3).
    A response is correct with probability 0.4, else wrong (result or operands) or evasive; in the last
    two tasks half the responses take the asked form."""
    rng = random.Random(seed)
    rows = []
    for i in range(per_task):
        for task, instruction in TASK_INSTRUCTIONS.items():
            question, _, expression = arithmetic_problem(rng)
            responses, golds = [], []
            for _ in range(size):
                kind = "correct" if rng.random() < 0.4 else rng.choice(FAILURES)
                in_form = task == "plain" or (rng.random() < 0.5 and kind != "evasive")
                responses.append(candidate(rng, expression, kind, explained=task == "explain" and in_form,
                                           number_only=task == "number only" and in_form))
                golds.append(float(kind == "correct") * (1.0 if in_form else 0.3))
            rows.append({"id": f"{task} {i}", "prompt": question + instruction, "responses": responses, "gold": golds, "group": task})
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return Path(path)
