"""Gold rewards from verifiable answers: extract a solution's final answer and compare it with the truth
(numbers and math expressions, or yes/no)."""

from __future__ import annotations

import math
import re

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_YES_NO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_TRUTH = {"yes": True, "true": True, "no": False, "false": False}


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


def yes_no_answer(text: str) -> bool | None:
    """The truth value a reply states: its first word when that is yes/no/true/false (case ignored),
    else the last such word in the text; None when there is none."""
    words = _YES_NO.findall(text)
    if not words:
        return None
    first = _YES_NO.match(text.lstrip(" \t\n*\"'"))
    return _TRUTH[(first.group(1) if first else words[-1]).lower()]


def answer_is_correct(response: str, answer: str) -> bool:
    """Whether the response's final answer equals `answer`. A yes/no/true/false answer (case ignored)
    compares with yes_no_answer(response); any other with extract_answer(response) after
    normalize_answer, numbers within 1e-6 relative."""
    truth = _TRUTH.get(answer.strip().lower())
    if truth is not None:
        return yes_no_answer(response) is truth
    found = extract_answer(response)
    if found is None:
        return False
    a, b = normalize_answer(found), normalize_answer(answer)
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    except ValueError:
        return a == b
