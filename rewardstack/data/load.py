"""Preference data: read files or Hugging Face datasets and normalise every row to a `PreferencePair`.

Accepted rows (TRL's formats, column names configurable through `Columns`):
- explicit prompt: `prompt` plus `chosen`/`rejected`, each a string or a list of chat messages;
- implicit prompt: only `chosen`/`rejected`, whole dialogues sharing all turns but the last, as message
  lists, Anthropic-style "\\n\\nHuman: … \\n\\nAssistant: …" strings, or plain strings with a shared prefix;
- an optional `margin` (number) and `subset` (any value, used to break evaluation down);
- PandaLM's rows (instruction, input, response1/2, annotator1..3), recognised by those fields; the label
  is the annotators' majority vote.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import json
import math
import random
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from ..errors import UserError
from ..options import option

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """One comparison: `chosen` is preferred to `rejected` as the next assistant turn after `prompt`."""

    prompt: tuple[Message, ...]
    chosen: str
    rejected: str
    margin: float | None = None
    subset: str | None = None


@dataclass
class Columns:
    """Where the fields are in the user's rows."""

    prompt_key: str = option("prompt", "Column of the prompt (absent from a row: the prompt is implicit in chosen/rejected)")
    chosen_key: str = option("chosen", "Column of the preferred response or dialogue")
    rejected_key: str = option("rejected", "Column of the other response or dialogue")
    margin_key: str = option("margin", "Optional column of per-pair margins")
    subset_key: str = option("subset", "Optional column to break evaluation down by")
    split: str = option("train", "Split of a Hugging Face dataset name")


@dataclass
class LoadReport:
    """What happened to the rows of one source: how many became pairs and why the others did not."""

    source: str
    rows: int = 0
    pairs: int = 0
    skipped: Counter = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "rows": self.rows, "pairs": self.pairs, "skipped": dict(self.skipped)}


class RowError(Exception):
    """A row that cannot become a pair; `reason` is the short category used in skip counts."""

    def __init__(self, reason: str, field_name: str | None, detail: str):
        super().__init__(detail)
        self.reason, self.field_name, self.detail = reason, field_name, detail


# Rows that a format drops by definition (not errors): always counted, never fatal.
class DroppedRow(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def load_preferences(source: Any, columns: Columns | None = None, skip_invalid: bool = False) -> tuple[list[PreferencePair], LoadReport]:
    """Read `source` (see `read_rows`, or a `Mixture`) into pairs. Invalid rows raise a `UserError` naming
    source, row and field, or, with `skip_invalid`, are counted by reason in the returned report."""
    columns = columns or Columns()
    if isinstance(source, Mixture):
        return source.load(columns, skip_invalid)
    report = LoadReport(source_name(source))
    pairs = list(iter_pairs(source, columns, skip_invalid, report))
    if not pairs:
        raise UserError(f"{report.source}: no usable preference pairs ({report.rows} rows, skipped {dict(report.skipped)})")
    return pairs, report


def iter_pairs(source: Any, columns: Columns, skip_invalid: bool, report: LoadReport) -> Iterator[PreferencePair]:
    """The pairs of `source` as they are read, counted in `report`."""
    def parse(row: dict, _: int) -> PreferencePair:
        return pandalm_pair(row) if _is_pandalm(row, columns) else row_to_pair(row, columns)

    return parse_rows(source, parse, skip_invalid, report, columns.split)


def parse_rows(source: Any, parse: Callable[[dict, int], Any], skip_invalid: bool, report: LoadReport, split: str = "train") -> Iterator[Any]:
    """The one loop over user rows: yield `parse(row, row_number)` for each row (None yields nothing).
    A `RowError` stops with source, row and field named, or is counted with `skip_invalid`; a
    `DroppedRow` is always counted. `report` counts rows read and items yielded as it goes."""
    for row_number, row in read_rows(source, split):
        report.rows += 1
        try:
            _check_row(row)
            item = parse(row, row_number)
        except DroppedRow as dropped:
            report.skipped[dropped.reason] += 1
            continue
        except RowError as err:
            _skip_or_raise(err, report.source, row_number, skip_invalid, report)
            continue
        if item is not None:
            report.pairs += 1
            yield item


@dataclass
class Mixture:
    """Preference pairs drawn from several sources in fixed shares: source i gives n_i pairs, the
    largest-remainder rounding of probabilities[i]·size (so the counts are exact), the first n_i usable
    pairs of that source; the pairs of all sources are interleaved in a seeded random order. Only the
    rows needed are read; a source with fewer than n_i pairs is an error, never silently repeated."""

    sources: Sequence[Any]
    probabilities: Sequence[float]
    size: int
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.sources) != len(self.probabilities) or not self.sources:
            raise UserError(f"a mixture needs one probability per source: {len(self.sources)} sources, {len(self.probabilities)} probabilities")
        if any(not math.isfinite(p) or p < 0 for p in self.probabilities) or not sum(self.probabilities) > 0:
            raise UserError(f"mixture probabilities must be non-negative with a positive sum, got {list(self.probabilities)}")
        if self.size < 1:
            raise UserError(f"a mixture's size must be at least 1, got {self.size}")

    def counts(self) -> list[int]:
        """n_i = ⌊p_i·size/Σp⌋, plus one for the largest remainders until the counts sum to size."""
        total = sum(self.probabilities)
        exact = [p * self.size / total for p in self.probabilities]
        counts = [math.floor(x) for x in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
        for i in by_remainder[: self.size - sum(counts)]:
            counts[i] += 1
        return counts

    def load(self, columns: Columns, skip_invalid: bool) -> tuple[list[PreferencePair], LoadReport]:
        report = LoadReport("mixture of " + ", ".join(source_name(s) for s in self.sources))
        drawn: list[PreferencePair] = []
        for source, count in zip(self.sources, self.counts()):
            if count == 0:
                continue
            part = LoadReport(source_name(source))
            taken = list(itertools.islice(iter_pairs(source, columns, skip_invalid, part), count))
            if len(taken) < count:
                raise UserError(f"{part.source}: the mixture takes {count} pairs from it, but it has only {len(taken)} "
                                f"({part.rows} rows, skipped {dict(part.skipped)}); lower the mixture's size")
            drawn += taken
            report.rows += part.rows
            report.skipped.update(part.skipped)
        random.Random(self.seed).shuffle(drawn)
        report.pairs = len(drawn)
        return drawn, report


def _skip_or_raise(err: RowError, source: str, row_number: int, skip_invalid: bool, report: LoadReport) -> None:
    """Count an invalid row under its reason, or stop with source, row and field named."""
    if not skip_invalid:
        where = f"field {err.field_name!r}: " if err.field_name else ""
        raise UserError(f"{source}: row {row_number}: {where}{err.detail}")
    report.skipped[err.reason] += 1


def source_name(source: Any) -> str:
    """How errors and reports name a source: a path or dataset name as given, else `<TypeName>`."""
    return str(source) if isinstance(source, (str, Path)) else f"<{type(source).__name__}>"


def named_data(data: Any) -> dict[str, Any]:
    """Data sets by name: a mapping is kept; a list of paths names each by its path (an empty list: no
    sets); anything else
    (one path, a dataset, a DataFrame, a list of rows) is one data set named by `source_name`."""
    if isinstance(data, Mapping):
        return dict(data)
    if isinstance(data, (list, tuple)) and all(isinstance(d, (str, Path)) for d in data):
        return {str(d): d for d in data}
    return {source_name(data): data}


def read_rows(source: Any, split: str = "train") -> Iterator[tuple[int, Any]]:
    """Yield (1-based row number, row) from a path (jsonl[.gz], json, parquet, csv), a Hugging Face dataset
    name (with `split`), a `datasets.Dataset` / `IterableDataset`, a pandas DataFrame or an iterable of
    dicts. A line that is not valid JSON or UTF-8 is yielded as a `RowError` so the caller decides what to
    do; a source that cannot be read at all is a `UserError` naming it."""
    if not isinstance(source, (str, Path)):
        yield from _read_objects(source)
        return
    path = Path(source)
    name = path.name.lower()
    if not path.exists():
        yield from _read_hub_dataset(str(source), split)
        return
    if name.endswith((".jsonl", ".jsonl.gz")):
        yield from _read_jsonl(path)
    elif name.endswith(".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: invalid UTF-8 at byte {exc.start}") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: a .json data file must hold a list of rows")
        yield from enumerate(data, 1)
    elif name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise UserError(f"{path}: not a readable parquet file ({exc})") from None
        yield from enumerate(table.to_pylist(), 1)
    elif name.endswith(".csv"):
        with open(path, newline="", encoding="utf-8", errors="surrogateescape") as handle:
            for number, row in enumerate(csv.DictReader(handle), 1):
                bad = next((key for key, value in row.items() if isinstance(value, str) and _has_surrogates(value)), None)
                yield number, RowError("invalid UTF-8", bad, "invalid UTF-8") if bad else row
    else:
        raise UserError(f"{path}: unsupported file type (use .jsonl, .jsonl.gz, .json, .parquet or .csv)")


def _read_objects(source: Any) -> Iterator[tuple[int, Any]]:
    """Rows of data already in memory. A DataFrame's missing cells (NaN/None) are left out of its rows,
    as absent fields; a DatasetDict must be narrowed to one split first."""
    kind = type(source).__name__
    if kind in ("DatasetDict", "IterableDatasetDict"):
        raise UserError(f"<{kind}>: choose a split, e.g. data['train'] (splits: {', '.join(source)})")
    if kind == "DataFrame" and hasattr(source, "columns"):
        import pandas as pd

        columns = list(source.columns)
        for number, values in enumerate(zip(*(source[c] for c in columns)), 1):
            yield number, {c: v for c, v in zip(columns, values) if not (pd.api.types.is_scalar(v) and pd.isna(v))}
        return
    if isinstance(source, (dict, bytes)) or not isinstance(source, Iterable):
        raise UserError(f"<{kind}>: unsupported data; give a file path, a Hugging Face dataset name, a datasets.Dataset, "
                        "a pandas DataFrame or a list of dicts")
    yield from enumerate(source, 1)


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a .jsonl or .jsonl.gz file; a gzip stream that is not one, truncated or corrupt stops
    with an error naming the file and the last row read."""
    gzipped = path.name.lower().endswith(".gz")
    number = 0
    try:
        with (gzip.open if gzipped else open)(path, "rb") as handle:
            for number, raw in enumerate(handle, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield number, RowError("invalid UTF-8", None, f"invalid UTF-8 at byte {exc.start}")
                    continue
                if not line.strip():
                    continue
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as exc:
                    yield number, RowError("invalid JSON", None, f"invalid JSON ({exc.msg} at column {exc.colno})")
    except EOFError:
        raise UserError(f"{path}: truncated gzip file: it ends inside row {number + 1}") from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        if "Not a gzipped file" in str(exc):
            raise UserError(f"{path}: not a gzip file (rename it to .jsonl if it is plain text)") from None
        raise UserError(f"{path}: corrupt gzip data after row {number} ({exc})") from None


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
DATA_SUFFIXES = (".jsonl", ".gz", ".json", ".parquet", ".csv", ".txt", ".tsv", ".arrow")


def _read_hub_dataset(name: str, split: str) -> Iterator[tuple[int, Any]]:
    """Rows of a Hugging Face dataset `owner/name` (from the local cache unless downloads are on); a name
    that looks like a file path is a missing file and never sent to the hub."""
    if not HUB_ID.fullmatch(name) or name.lower().endswith(DATA_SUFFIXES) or Path(name).parent.is_dir():
        raise UserError(f"{name}: no such file")
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except Exception as exc:  # datasets raises many types for missing/offline datasets
        raise UserError(
            f"{name}: no such file, and no such Hugging Face dataset in the local cache ({type(exc).__name__}); "
            "downloads happen only with REWARDSTACK_ALLOW_DOWNLOAD=1"
        ) from None
    yield from enumerate(dataset, 1)


def row_to_pair(row: dict, columns: Columns) -> PreferencePair:
    chosen = _required(row, columns.chosen_key)
    rejected = _required(row, columns.rejected_key)
    prompt_value = row.get(columns.prompt_key)
    if prompt_value is None:
        prompt, chosen_text, rejected_text = _split_implicit(chosen, rejected, columns)
    else:
        prompt = _prompt_messages(prompt_value, columns.prompt_key)
        chosen_text = _response_after(chosen, columns.chosen_key)
        rejected_text = _response_after(rejected, columns.rejected_key)
    if not chosen_text.strip():
        raise RowError("empty response", columns.chosen_key, "empty response")
    if not rejected_text.strip():
        raise RowError("empty response", columns.rejected_key, "empty response")
    if chosen_text == rejected_text:
        raise RowError("chosen equals rejected", columns.rejected_key, "identical to the chosen response")
    return PreferencePair(tuple(prompt), chosen_text, rejected_text, _margin(row, columns.margin_key), _subset(row, columns.subset_key))


def _is_pandalm(row: dict, columns: Columns) -> bool:
    return columns.chosen_key not in row and {"response1", "response2", "annotator1"} <= row.keys()


def pandalm_pair(row: dict) -> PreferencePair:
    """PandaLM: prompt = instruction (+ input), label = majority of annotator1..3 (1 or 2; 0 = tie)."""
    instruction = _string(row, "instruction")
    extra = row.get("input") or ""
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    votes = Counter(row.get(f"annotator{i}") for i in (1, 2, 3))
    if votes[1] == votes[2]:
        raise DroppedRow("tie (no majority)")
    keys = ("response1", "response2") if votes[1] > votes[2] else ("response2", "response1")  # chosen, rejected
    chosen, rejected = (_string(row, key) for key in keys)
    for key, text in zip(keys, (chosen, rejected)):
        if not text.strip():
            raise RowError("empty response", key, "empty response")
    if chosen == rejected:
        raise RowError("chosen equals rejected", "response2", "identical to the other response")
    return PreferencePair(({"role": "user", "content": prompt},), chosen, rejected)


def _check_row(row: Any) -> None:
    if isinstance(row, RowError):
        raise row
    if not isinstance(row, dict):
        raise RowError("wrong type", None, f"a row must be an object, got {type(row).__name__}")


def _required(row: dict, key: str) -> Any:
    if key not in row or row[key] is None:
        raise RowError("missing field", key, "missing")
    return row[key]


def _string(row: dict, key: str) -> str:
    value = _required(row, key)
    if not isinstance(value, str):
        raise RowError("wrong type", key, f"expected a string, got {type(value).__name__}")
    return value


def _margin(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise RowError("wrong type", key, "expected a number, got bool")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise RowError("wrong type", key, f"expected a number, got {value!r:.40}") from None
    if not math.isfinite(number):
        raise RowError("not finite", key, f"expected a finite number, got {value!r:.40}")
    return number


def _subset(row: dict, key: str) -> str | None:
    value = row.get(key)
    return None if value is None else str(value)


def _messages(value: Any, key: str) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise RowError("wrong type", key, "expected a string or a non-empty list of chat messages")
    for i, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
            raise RowError("wrong type", key, f"message {i} must be an object with string 'role' and 'content'")
        if message["role"] not in ROLES:
            raise RowError("unknown role", key, f"message {i} has role {message['role']!r}, not one of {', '.join(ROLES)}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


ANTHROPIC_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def parse_anthropic(text: str) -> list[Message] | None:
    """Split "\\n\\nHuman: … \\n\\nAssistant: …" into messages; None if `text` is not in that format."""
    if not text.startswith("\n\nHuman:") and not text.startswith("Human:"):
        return None
    parts = ANTHROPIC_TURN.split("\n\n" + text if text.startswith("Human:") else text)
    if parts[0].strip():
        return None
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": content.strip()} for speaker, content in zip(parts[1::2], parts[2::2])]


def _prompt_messages(value: Any, key: str) -> list[Message]:
    if isinstance(value, str):
        messages = parse_anthropic(value)
        if messages is None:
            return [{"role": "user", "content": value}]
        if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages.pop()  # "…\n\nAssistant:" left open for the response
        return messages
    return _messages(value, key)


def _response_after(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    messages = _messages(value, key)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise RowError("wrong type", key, "with an explicit prompt, a conversational response must be one assistant message")
    return messages[0]["content"]


def _split_implicit(chosen: Any, rejected: Any, columns: Columns) -> tuple[list[Message], str, str]:
    """Shared prompt and the two final responses of two whole dialogues."""
    if isinstance(chosen, str) and isinstance(rejected, str):
        chosen_msgs, rejected_msgs = parse_anthropic(chosen), parse_anthropic(rejected)
        if chosen_msgs is None or rejected_msgs is None:
            return _split_plain(chosen, rejected)
    else:
        chosen_msgs, rejected_msgs = _messages(chosen, columns.chosen_key), _messages(rejected, columns.rejected_key)
    for msgs, key in ((chosen_msgs, columns.chosen_key), (rejected_msgs, columns.rejected_key)):
        if len(msgs) < 2 or msgs[-1]["role"] != "assistant":
            raise RowError("no shared prompt", key, "an implicit-prompt dialogue must end with an assistant turn after a prompt")
    if chosen_msgs[:-1] != rejected_msgs[:-1]:
        raise RowError("no shared prompt", columns.rejected_key, "chosen and rejected must share every turn but the last")
    return chosen_msgs[:-1], chosen_msgs[-1]["content"], rejected_msgs[-1]["content"]


def _split_plain(chosen: str, rejected: str) -> tuple[list[Message], str, str]:
    """Plain strings: the longest common prefix, cut back to a whitespace boundary, is the prompt."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    while n > 0 and not chosen[n - 1].isspace():
        n -= 1
    if n == 0:
        raise RowError("no shared prompt", "chosen", "no prompt column and chosen/rejected share no prefix")
    return [{"role": "user", "content": chosen[:n]}], chosen[n:], rejected[n:]


def load_score_rows(
    source: Any, prompt_key: str = "prompt", response_key: str = "response", skip_invalid: bool = False
) -> tuple[list[dict], list[tuple[Message, ...]], list[str], LoadReport]:
    """Rows to score: (the rows as read, their prompts as messages, their responses, report)."""
    def parse(row: dict, _: int) -> tuple[dict, tuple[Message, ...], str]:
        return row, tuple(_prompt_messages(_required(row, prompt_key), prompt_key)), _string(row, response_key)

    report = LoadReport(source_name(source))
    parsed = list(parse_rows(source, parse, skip_invalid, report))
    return [p[0] for p in parsed], [p[1] for p in parsed], [p[2] for p in parsed], report
