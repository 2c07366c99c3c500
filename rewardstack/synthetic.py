"""Generated preference data with a verifiable answer: templated arithmetic word problems.

The chosen response works the problem out correctly. The rejected one fails in one of three ways, kept
in the `subset` column so evaluation shows which failures a reward model catches:
- `wrong result`: the right operands, a wrong result (the reward model must do the arithmetic);
- `wrong operands`: a number not in the question, worked out consistently (it must compare with the prompt);
- `evasive`: no answer at all.
Used by the tests; `word_problems` gives the demo prompts with small numbers for a policy to answer.
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


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
    return Path(path)
