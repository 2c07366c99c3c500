"""Gold rewards from verifiable answers: extract a solution's final answer and compare it with the truth."""

from __future__ import annotations

import math
import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def extract_answer(text: str) -> str | None:
    """The final answer of a solution: the last \\boxed{…} (nested braces kept), else what follows the
    last '####', else the last number in the text; None when there is none."""
    boxes = list(_BOXED.finditer(text))
    if boxes:
        start = boxes[-1].end()
        depth = 1
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[start:i].strip()
        return None
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().split("\n")[0].strip() or None
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def normalize_answer(answer: str) -> str:
    """Canonical text of an answer: no spaces, $, \\left/\\right, text wrappers or trailing period;
    \\dfrac → \\frac; 1,000 → 1000; numbers without trailing zeros (2.50 → 2.5, 3.0 → 3)."""
    text = answer.strip().rstrip(".")
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", text)
    for old, new in (("\\left", ""), ("\\right", ""), ("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("$", ""), ("\\!", ""), (" ", "")):
        text = text.replace(old, new)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return text
    return f"{value:.10g}" if math.isfinite(value) else text


def answer_is_correct(response: str, answer: str) -> bool:
    """Whether the response's final answer (extract_answer) equals `answer` after normalize_answer;
    numbers compare within 1e-6 relative."""
    found = extract_answer(response)
    if found is None:
        return False
    a, b = normalize_answer(found), normalize_answer(answer)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    except ValueError:
        return a == b
