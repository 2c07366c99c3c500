"""Generated preference data with a verifiable answer: templated arithmetic word problems.

The chosen response states the right result, the rejected one a wrong result in the same words, so a
reward model must read the numbers to tell them apart. Used by the demo and the tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

TEMPLATES = [
    ("{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?", "+"),
    ("{name} had {a} {item}s and gave away {b}. How many {item}s are left?", "-"),
    ("A box holds {a} {item}s. How many {item}s are in {b} boxes?", "*"),
]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo"]
ITEMS = ["apple", "book", "coin", "marble", "pencil", "sticker"]


def arithmetic_problem(rng: random.Random) -> tuple[str, int, str]:
    """(question, answer, worked expression) for one templated problem."""
    template, op = rng.choice(TEMPLATES)
    a, b = rng.randint(2, 40), rng.randint(2, 12)
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    question = template.format(name=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b)
    return question, answer, f"{a} {op} {b}"


def arithmetic_pairs(count: int, seed: int = 0) -> list[dict]:
    """`count` rows {prompt, chosen, rejected, subset} with the operation as subset."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        question, answer, expression = arithmetic_problem(rng)
        wrong = answer + rng.choice([-10, -2, -1, 1, 2, 10])
        wrong = wrong if wrong >= 0 else answer + 3
        rows.append(
            {
                "prompt": question,
                "chosen": f"{expression} = {answer}. The answer is {answer}.",
                "rejected": f"{expression} = {wrong}. The answer is {wrong}.",
                "subset": {"+": "addition", "-": "subtraction", "*": "multiplication"}[expression.split()[1]],
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
