import gzip
import json
import math
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rewardstack.backbones import tiny_random_tokenizer
from rewardstack.data.encode import Encoded, Encoder, as_messages, encode_pairs, length_batches, pad_right, prompt_key, render, truncate
from rewardstack.data.load import Columns, PreferencePair, load_preferences, load_score_rows, parse_anthropic
from rewardstack.errors import UserError

from conftest import write_rows

USER_HI = ({"role": "user", "content": "Hi?"},)


def test_standard_rows_from_every_file_type(tmp_path):
    rows = [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away.", "margin": 1.5}]
    expected = [PreferencePair(USER_HI, "Hello.", "Go away.", 1.5)]
    write_rows(tmp_path / "a.jsonl", rows)
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    (tmp_path / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_text("prompt,chosen,rejected,margin\nHi?,Hello.,Go away.,1.5\n")
    for name in ("a.jsonl", "a.jsonl.gz", "a.json", "a.parquet", "a.csv"):
        pairs, report = load_preferences(tmp_path / name)
        assert pairs == expected, name
        assert (report.rows, report.pairs) == (1, 1)


def test_conversational_explicit_and_implicit(tmp_path):
    user = [{"role": "user", "content": "Hi?"}]
    rows = [
        {"prompt": user, "chosen": [{"role": "assistant", "content": "Hello."}], "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": user + [{"role": "assistant", "content": "Hello."}], "rejected": user + [{"role": "assistant", "content": "No."}]},
    ]
    pairs, _ = load_preferences(write_rows(tmp_path / "c.jsonl", rows))
    assert pairs == [PreferencePair(USER_HI, "Hello.", "No.")] * 2


def test_anthropic_dialogues_split_into_prompt_and_final_turns(tmp_path):
    shared = "\n\nHuman: Hi?\n\nAssistant: Hey.\n\nHuman: Help me."
    row = {"chosen": shared + "\n\nAssistant: Sure.", "rejected": shared + "\n\nAssistant: No."}
    (pair,), _ = load_preferences(write_rows(tmp_path / "h.jsonl", [row]))
    assert pair.prompt == (
        {"role": "user", "content": "Hi?"},
        {"role": "assistant", "content": "Hey."},
        {"role": "user", "content": "Help me."},
    )
    assert (pair.chosen, pair.rejected) == ("Sure.", "No.")
    assert parse_anthropic("plain text") is None


def test_plain_strings_split_at_shared_prefix_and_custom_columns(tmp_path):
    row = {"good": "Q: 2+2? A: 4", "bad": "Q: 2+2? A: 5", "grp": "math"}
    columns = Columns(chosen_key="good", rejected_key="bad", subset_key="grp")
    (pair,), _ = load_preferences(write_rows(tmp_path / "p.jsonl", [row]), columns)
    assert pair == PreferencePair(({"role": "user", "content": "Q: 2+2? A: "},), "4", "5", None, "math")


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "p", "rejected": "b"}', "row 2: field 'chosen': missing"),
        ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "row 2: field 'chosen': expected a string or a non-empty list"),
        ('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "x"}', "row 2: field 'margin': expected a number"),
        ('{"prompt": "p", "chosen": ', "row 2: invalid JSON"),
        ('{"prompt": "p", "chosen": "  ", "rejected": "b"}', "row 2: field 'chosen': empty response"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}', "row 2: field 'rejected': identical to the chosen response"),
        ('[1, 2]', "row 2: a row must be an object"),
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, line, message):
    path = write_rows(tmp_path / "bad.jsonl", ['{"prompt": "p", "chosen": "a", "rejected": "b"}', line])
    with pytest.raises(UserError) as err:
        load_preferences(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_skip_invalid_counts_by_reason(tmp_path):
    rows = [
        '{"prompt": "p", "chosen": "a", "rejected": "b"}',
        '{"prompt": "p", "chosen": "a", "rejected": "a"}',
        '{"prompt": "p", "chosen": "", "rejected": "b"}',
        '{"prompt": "p", "chosen": "', 
        '{"prompt": "p", "chosen": "c", "rejected": "d"}',
    ]
    pairs, report = load_preferences(write_rows(tmp_path / "s.jsonl", rows), skip_invalid=True)
    assert len(pairs) == 2
    assert report.to_dict()["skipped"] == {"chosen equals rejected": 1, "empty response": 1, "invalid JSON": 1}
    assert report.rows == 5


def test_pandalm_rows_recognised_majority_vote_and_ties_counted(tmp_path):
    base = {"instruction": "Fix it.", "input": "teh cat", "response1": "the cat", "response2": "teh cat"}
    rows = [
        {**base, "annotator1": 1, "annotator2": 1, "annotator3": 2},
        {**base, "annotator1": 2, "annotator2": 0, "annotator3": 2},
        {**base, "annotator1": 1, "annotator2": 2, "annotator3": 0},
    ]
    pairs, report = load_preferences(write_rows(tmp_path / "pl.jsonl", rows))
    prompt = ({"role": "user", "content": "Fix it.\n\nteh cat"},)
    assert pairs == [PreferencePair(prompt, "the cat", "teh cat"), PreferencePair(prompt, "teh cat", "the cat")]
    assert report.to_dict()["skipped"] == {"tie (no majority)": 1}


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_preferences(tmp_path / "nope.jsonl")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="unsupported file type"):
        load_preferences(tmp_path / "x.txt")


def test_unknown_hub_dataset_is_a_user_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="someorg/no-such-dataset: no such file, and no such Hugging Face dataset"):
        load_preferences("someorg/no-such-dataset")


def test_score_rows_keep_everything(tmp_path):
    rows = [{"prompt": "Hi?", "response": "Hello.", "id": 7}, {"prompt": "Hi?", "response": 5}]
    path = write_rows(tmp_path / "s.jsonl", rows)
    with pytest.raises(UserError, match=r"row 2: field 'response': expected a string"):
        load_score_rows(path)
    kept, prompts, responses, report = load_score_rows(path, skip_invalid=True)
    assert kept == [rows[0]] and prompts == [USER_HI] and responses == ["Hello."]
    assert report.to_dict()["skipped"] == {"wrong type": 1}


def test_truncate_keeps_prompt_end_and_response_start():
    prompt, responses = list(range(10)), [[100, 101, 102], [200, 201, 202, 203, 204, 205]]
    assert truncate(prompt, responses, 16, 8) == (prompt, responses, False)
    # longest response 6: prompt keeps max(12 - 6, 8 // 2 = 4) = 6 tokens; responses get 12 - 6 = 6.
    assert truncate(prompt, responses, 12, 4) == ([4, 5, 6, 7, 8, 9], responses, True)
    # prompt keeps at least max_prompt_length = 8 of 10; responses get 2 tokens.
    assert truncate(prompt, responses, 10, 8) == ([2, 3, 4, 5, 6, 7, 8, 9], [[100, 101], [200, 201]], True)


def test_encoder_applies_chat_template_with_exact_boundary():
    tok = tiny_random_tokenizer()
    encoder = Encoder(tok, max_length=256)
    (a, b), cut = encoder.encode(USER_HI, ["Hello.", "No."])
    assert not cut and a.prompt_ids == b.prompt_ids
    assert tok.decode(a.prompt_ids) == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.decode(a.response_ids) == "Hello.<|im_end|>\n"


def bos_tokenizer():
    """The tiny byte-level tokenizer with a post-processor that puts <|im_start|> first, as a BOS would."""
    from tokenizers.processors import TemplateProcessing

    tok = tiny_random_tokenizer()
    bos = tok.convert_tokens_to_ids("<|im_start|>")
    tok._tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    return tok, bos


def test_render_by_template_by_fallback_and_without_one():
    tok = tiny_random_tokenizer()
    assert render(tok, USER_HI, "Yes.") == ("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n", "Yes.<|im_end|>\n")
    tok.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    assert render(tok, USER_HI, "Yes.") == ("[Hi?]>", "Yes." + tok.eos_token)  # the full text does not begin with the prompt's
    eos, tok.eos_token = tok.eos_token, None
    assert render(tok, USER_HI, "Yes.") == ("[Hi?]>", "Yes.")
    tok.eos_token, tok.chat_template = eos, None
    system = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"})
    assert render(tok, system, "Yes.") == ("System: Be brief.\n\nUser: Hi?\n\nAssistant: ", "Yes." + tok.eos_token)
    tok.eos_token = None
    assert render(tok, USER_HI, "Yes.")[1] == "Yes."


def test_encoder_lengths_and_special_tokens():
    tok, bos = bos_tokenizer()
    assert Encoder(tok, max_length=8).max_length == 8  # the smallest allowed
    assert Encoder(tok, max_length=9).max_prompt_length == 4 and isinstance(Encoder(tok, max_length=9).max_prompt_length, int)
    assert Encoder(tok, max_length=9, max_prompt_length=1).max_prompt_length == 1
    assert Encoder(tok, max_length=20, max_prompt_length=15).max_prompt_length == 15
    for bad in ({"max_length": 7}, {"max_length": 9, "max_prompt_length": 0}, {"max_length": 9, "max_prompt_length": 9}):
        with pytest.raises(ValueError):
            Encoder(tok, **bad)
    (templated,), _ = Encoder(tok, 256).encode(USER_HI, ["Yes."])
    assert templated.prompt_ids.count(bos) == 2 and templated.response_ids[0] != bos  # the template's own two turn starts, no extra BOS
    tok.chat_template = None
    (plain,), _ = Encoder(tok, 256).encode(USER_HI, ["Yes."])
    assert plain.prompt_ids[0] == bos and tok.decode(plain.prompt_ids[1:]) == "User: Hi?\n\nAssistant: "
    assert bos not in plain.response_ids and len(plain) == len(plain.ids) == len(plain.prompt_ids) + len(plain.response_ids)
    # A long prompt with long responses keeps max_prompt_length of its last tokens.
    (cut,), was_cut = Encoder(tok, max_length=40, max_prompt_length=30).encode(as_messages("x" * 100), ["y" * 100])
    assert was_cut and len(cut.prompt_ids) == 30 and len(cut) == 40


def test_messages_prompt_keys_and_encoded_pairs():
    assert as_messages("Hi?") == ({"role": "user", "content": "Hi?"},)
    assert as_messages(USER_HI) == tuple(USER_HI)
    for bad in ([], [{"role": "robot", "content": "x"}], [{"role": "user", "content": 3}], ["text"]):
        with pytest.raises(UserError, match="prompt"):
            as_messages(bad)
    assert prompt_key("Hi?") == prompt_key(USER_HI) != prompt_key("Hi!")
    pairs = [PreferencePair(prompt=as_messages(f"q{i}"), chosen="c" * [1, 3, 2][i], rejected="r", margin=[None, 2.0, 0.5][i], subset=["s", None, "t"][i])
             for i in range(3)]
    encoder = Encoder(tiny_random_tokenizer(), max_length=25, max_prompt_length=12)  # prompts are 21 tokens
    encoded = encode_pairs(encoder, pairs)
    assert encoded.margin == [0.0, 2.0, 0.5] and encoded.subset == ["s", None, "t"] and encoded.truncated == 1  # only the middle pair (21 + 5 tokens) is cut
    assert [encoded.tokens(i) for i in range(3)] == [len(encoded.chosen[i]) + len(encoded.rejected[i]) for i in range(3)]
    assert encoded.tokens(0) != encoded.tokens(2)
    taken = encoded.take([2, 0])
    assert taken.chosen == [encoded.chosen[2], encoded.chosen[0]] and taken.rejected == [encoded.rejected[2], encoded.rejected[0]]
    assert taken.margin == [0.5, 0.0] and taken.subset == ["t", "s"] and taken.truncated == 1 and len(taken) == 2
    assert Encoded((1, 2), (3,)).ids == [1, 2, 3]


def test_padding_and_length_batches():
    ids, mask = pad_right([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
    assert length_batches([1, 5, 3, 4], 2) == [[1, 3], [2, 0]]


def test_generated_arithmetic_pairs_are_verifiable():
    from rewardstack.synthetic import arithmetic_pairs

    rows = arithmetic_pairs(30, seed=5)
    assert rows == arithmetic_pairs(30, seed=5)
    assert [r["subset"] for r in rows[:3]] == ["wrong result", "wrong operands", "evasive"]
    for row in rows:
        expression, _, rest = row["chosen"].partition(" = ")
        a, op, b = expression.split()
        assert int(rest.split(".")[0]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert a in row["prompt"] and b in row["prompt"]
        assert row["chosen"] != row["rejected"]


def true_answer(prompt: str) -> int:
    """The answer of a generated base-world problem, read back from its words."""
    import re

    a, b = map(int, re.findall(r"\d+", prompt)[:2])
    return a + b if "more" in prompt else a - b if "away" in prompt else a * b


def test_generated_aspect_pools_have_the_documented_golds():
    """gated: correct · (0.5 + 0.25·stated + 0.25·concise); additive: 0.5·correct + 0.25·stated + 0.25·concise,
    read back from each response's text; both golds over the same responses."""
    from rewardstack.gold import answer_is_correct
    from rewardstack.synthetic import FILLERS, aspect_pools

    gated, additive = aspect_pools(60, 6, seed=3, gold="gated"), aspect_pools(60, 6, seed=3, gold="additive")
    assert [r["responses"] for r in gated] == [r["responses"] for r in additive]
    kinds = set()
    for g_row, a_row in zip(gated, additive):
        answer = true_answer(g_row["prompt"])
        for response, g, a in zip(g_row["responses"], g_row["gold"], a_row["gold"]):
            stated = response.endswith(f"The answer is {response.split(' = ')[-1].split('.')[0]}.") if " = " in response else False
            concise = not any(response.startswith(f) for f in FILLERS)
            correct = " = " in response and answer_is_correct(response, str(answer))
            assert g == correct * (0.5 + 0.25 * stated + 0.25 * concise) and a == 0.5 * correct + 0.25 * stated + 0.25 * concise
            kinds.add((correct, stated, concise))
    assert len(kinds) == 8  # every combination occurs
    with pytest.raises(ValueError, match="gold must be one of"):
        aspect_pools(1, gold="other")


def test_generated_mixed_task_pools_reward_the_asked_form_only_when_correct():
    from rewardstack.gold import answer_is_correct
    from rewardstack.synthetic import mixed_task_pools

    rows = mixed_task_pools(40, 6, seed=2)
    assert [r["group"] for r in rows[:4]] == ["plain", "number only", "explain", "plain"] and len(rows) == 120
    seen = set()
    for row in rows:
        answer = true_answer(row["prompt"])
        for response, gold in zip(row["responses"], row["gold"]):
            correct = answer_is_correct(response, str(answer)) and not response.startswith(("It is", "You could", "That depends"))
            in_form = {"plain": True, "number only": response.lstrip("-").isdigit(), "explain": response.startswith("We start from")}[row["group"]]
            assert gold == correct * (1.0 if in_form else 0.3), (row["prompt"], response)
            seen.add((row["group"], correct, in_form))
    assert len(seen) == 2 + 4 + 4  # plain: right or wrong; the others: right or wrong, each in the asked form or not


def test_implicit_prompts_back_off_to_a_word_boundary_and_need_every_earlier_turn_equal(tmp_path):
    """The shared prefix 'The answer is fo' is cut back to 'The answer is ' (no half word in the prompt);
    dialogues that differ in an earlier turn share no prompt."""
    rows = [{"chosen": "The answer is forty", "rejected": "The answer is four"}]
    (pair,), _ = load_preferences(write_rows(tmp_path / "w.jsonl", rows))
    assert pair == PreferencePair(({"role": "user", "content": "The answer is "},), "forty", "four")
    turns = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hey."}, {"role": "user", "content": "Help me."}]
    other = [turns[0], {"role": "assistant", "content": "Hello."}, turns[2]]
    row = {"chosen": turns + [{"role": "assistant", "content": "Sure."}], "rejected": other + [{"role": "assistant", "content": "No."}]}
    with pytest.raises(UserError, match="row 1: field 'rejected': chosen and rejected must share every turn but the last"):
        load_preferences(write_rows(tmp_path / "d.jsonl", [row]))


def test_mutation_survivors_in_the_row_readers(tmp_path):
    """Bugs bench/mutation.py showed the suite missed in data/load: the plain splitter's scan and
    back-off steps at odd positions, a prefix that is a whole response, no shared prefix or no space in it;
    the implicit splitter's type and shape checks; chat-message checks naming their field; PandaLM's third
    annotator and input; skip counts; score rows' source; invalid UTF-8 in a CSV cell."""
    def split(chosen, rejected):
        (pair,), _ = load_preferences([{"chosen": chosen, "rejected": rejected}])
        return pair.prompt[0]["content"], pair.chosen, pair.rejected

    assert split("Hi a b", "Hi c b") == ("Hi ", "a b", "c b")  # the first difference at an odd index, equal text after it
    assert split("Hi abc1", "Hi abc2") == ("Hi ", "abc1", "abc2")  # a back-off of 3 characters
    assert split("Say hi. Hello there", "Say hi. Hello") == ("Say hi. ", "Hello there", "Hello")  # rejected is a prefix of chosen
    for chosen, rejected in (("Ab c", "Bb c"), ("Yesterday", "Yesternight")):  # first characters differ; a prefix with no space
        with pytest.raises(UserError, match="row 1: field 'chosen': no prompt column and chosen/rejected share no prefix"):
            split(chosen, rejected)

    def dialogue(*turns):
        return [{"role": role, "content": content} for role, content in turns]

    system = dialogue(("system", "Be brief."), ("user", "Hi?"))
    (pair,), _ = load_preferences([{"chosen": system + dialogue(("assistant", "Yo.")), "rejected": system + dialogue(("assistant", "Hello."))}])
    assert pair == PreferencePair(tuple(system), "Yo.", "Hello.")
    bad = {  # row → the error's field and text
        "only an answer": ({"chosen": dialogue(("assistant", "A.")), "rejected": dialogue(("assistant", "B."))},
                           "field 'chosen': an implicit-prompt dialogue must end with an assistant turn after a prompt"),
        "text beside a dialogue": ({"chosen": "Hi. A.", "rejected": dialogue(("user", "Hi."), ("assistant", "B."))},
                                   "field 'chosen': expected a string or a non-empty list of chat messages"),
        "one Anthropic transcript": ({"chosen": "Human: Hi\n\nAssistant: Yo", "rejected": "Hi there"},
                                     "field 'chosen': no prompt column and chosen/rejected share no prefix"),
        "a number as content": ({"chosen": system + [{"role": "assistant", "content": 5}], "rejected": system + dialogue(("assistant", "B."))},
                                "field 'chosen': message 2 must be an object with string 'role' and 'content'"),
        "a string as a message": ({"chosen": system + dialogue(("assistant", "A.")), "rejected": ["Hi?"]},
                                  "field 'rejected': message 0 must be an object with string 'role' and 'content'"),
    }
    for name, (row, message) in bad.items():
        with pytest.raises(UserError, match=f"<list>: row 1: {message}"):
            load_preferences([row])

    base = {"instruction": "Fix it.", "response1": "the cat", "response2": "teh cat", "annotator1": 1, "annotator2": 2, "annotator3": 2}
    pairs, _ = load_preferences([base, {**base, "input": "  "}, {**base, "input": "teh cat", "annotator3": 1}])
    assert pairs == [PreferencePair(({"role": "user", "content": "Fix it."},), "teh cat", "the cat")] * 2 + \
        [PreferencePair(({"role": "user", "content": "Fix it.\n\nteh cat"},), "the cat", "teh cat")]
    with pytest.raises(UserError, match="row 1: field 'response2': empty response"):  # the chosen one (2 by majority) is empty
        load_preferences([{**base, "response2": " "}])

    rows = [{"prompt": "a"}, {"prompt": "b", "chosen": "x"}, {"prompt": "c", "chosen": "x", "rejected": "y"}]
    assert load_preferences(rows, skip_invalid=True)[1].to_dict()["skipped"] == {"missing field": 2}
    path = write_rows(tmp_path / "score.jsonl", [{"prompt": "Hi", "response": "Yo"}, {"prompt": [{"role": "user", "content": 1}], "response": "x"}])
    with pytest.raises(UserError, match="score.jsonl: row 2: field 'prompt': message 0 must be an object"):
        load_score_rows(path)
    assert load_score_rows(path, skip_invalid=True)[3].to_dict() == {"source": str(path), "rows": 2, "pairs": 1, "skipped": {"wrong type": 1}}
    (tmp_path / "bad.csv").write_bytes(b"prompt,chosen,rejected\nHi,ok,caf\xe9\n")
    with pytest.raises(UserError, match="bad.csv: row 1: field 'rejected': invalid UTF-8"):
        load_preferences(tmp_path / "bad.csv")


def test_hub_names_are_read_with_their_split_and_paths_never_reach_the_hub(monkeypatch, tmp_path):
    """A name `owner/name` goes to datasets.load_dataset with Columns.split, rows numbered from 1; a name
    with a data suffix or under an existing folder is a missing file and never sent."""
    import datasets

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        return [{"prompt": "Hi", "chosen": "a", "rejected": "b"}, {"prompt": "Hi", "chosen": "a"}]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    with pytest.raises(UserError, match="^someorg/prefs: row 2: field 'rejected': missing$"):
        load_preferences("someorg/prefs", Columns(split="test"))
    pairs, report = load_preferences("someorg/prefs", skip_invalid=True)
    assert pairs == [PreferencePair(({"role": "user", "content": "Hi"},), "a", "b")] and report.skipped == {"missing field": 1}
    assert calls == [("someorg/prefs", "test"), ("someorg/prefs", "train")]
    (tmp_path / "folder").mkdir()
    monkeypatch.chdir(tmp_path)
    for name in ("someorg/prefs.JSONL", "folder/prefs"):  # a hub-like name with a data suffix; one under a folder here
        with pytest.raises(UserError, match=f"^{re.escape(name)}: no such file$"):
            load_preferences(name)
    assert len(calls) == 2


def test_mixture_checks_counts_and_reports_exactly():
    """Mixture: probability and size checks at their edges, largest-remainder counts where the larger
    remainder is not first, zero-count sources skipped (and later ones still read), skips counted."""
    from rewardstack.data.load import Mixture

    def rows(tag, n, bad=0):
        return [{"prompt": f"{tag}{i}", "chosen": "a", "rejected": "b"} for i in range(n)] + [{"prompt": "x"}] * bad

    for probabilities in ([1, -0.5], [math.inf, 1], [0, 0]):
        with pytest.raises(UserError, match="non-negative with a positive sum"):
            Mixture([[], []], probabilities, 2)
    with pytest.raises(UserError, match="size must be at least 1, got 0"):
        Mixture([[]], [1], 0)
    assert Mixture([[], []], [3, 1], 3).counts() == [2, 1]  # exact 2.25, 0.75: the one extra pair goes to the larger remainder
    pairs, report = load_preferences(Mixture([rows("a", 2), rows("b", 1), rows("c", 3, bad=1)], [0, 1, 2], 3))
    assert sorted(p.prompt[0]["content"] for p in pairs) == ["b0", "c0", "c1"] and report.pairs == 3
    assert report.source == "mixture of <list>, <list>, <list>" and report.rows == 1 + 2
    with pytest.raises(UserError, match="row 2: field 'chosen': missing"):
        load_preferences(Mixture([rows("b", 1), [rows("c", 1)[0], {"prompt": "x"}] + rows("d", 1)], [1, 2], 3))
    pairs, report = load_preferences(Mixture([rows("b", 1), [rows("c", 1)[0], {"prompt": "x"}] + rows("d", 1)], [1, 2], 3), skip_invalid=True)
    assert len(pairs) == 3 and report.skipped == {"missing field": 1} and report.rows == 1 + 3
    with pytest.raises(UserError, match=r"^<list>: the mixture takes 2 pairs from it, but it has only 1 \(2 rows, skipped \{'missing field': 1\}\)"):
        load_preferences(Mixture([rows("b", 1, bad=1)], [1], 2), skip_invalid=True)


def test_mutation_survivors_in_the_file_and_object_readers(monkeypatch, tmp_path):
    """Bugs the second mutation run of data/load showed the suite missed: row numbers of .json, parquet and
    DataFrame rows; invalid UTF-8 and blank lines in a .jsonl; gzip files that are not one or end early;
    DatasetDict-like objects and objects that merely have `columns`; repeated drops and what follows
    them; an empty margin; a PandaLM row at its minimal keys and with a unanimous second annotator;
    Anthropic-style prompts; a conversational response of two messages; split defaults."""
    import datasets
    import pandas as pd

    from rewardstack.data.load import LoadReport, Mixture, parse_rows, read_rows
    from rewardstack.data.pools import load_prompts

    good, bad = {"prompt": "Hi", "chosen": "a", "rejected": "b"}, {"prompt": "Hi", "chosen": "a"}
    (tmp_path / "rows.json").write_text(json.dumps([good, bad]))
    pq.write_table(pa.Table.from_pylist([good, {**bad, "rejected": None}]), tmp_path / "rows.parquet")
    frame = pd.DataFrame([good, {**bad, "rejected": math.nan}])
    for source, name in ((tmp_path / "rows.json", "rows.json"), (tmp_path / "rows.parquet", "rows.parquet"), (frame, "<DataFrame>")):
        with pytest.raises(UserError, match=f"{re.escape(name)}: row 2: field 'rejected': missing"):
            load_preferences(source)
    hi = {"role": "user", "content": "Hi"}
    dialogues = pd.DataFrame([{"chosen": [hi, {"role": "assistant", "content": "a"}], "rejected": [hi, {"role": "assistant", "content": "b"}]}])
    assert load_preferences(dialogues)[0] == [PreferencePair((hi,), "a", "b")]  # a list cell is no gap
    # CSV: a quoted field keeps its line break as written; a cell that is not UTF-8 is counted under its reason
    (tmp_path / "rows.csv").write_bytes(b'prompt,chosen,rejected\r\nHi,"line 1\r\nline 2",b\r\nHi,caf\xe9,b\r\n')
    pairs, report = load_preferences(tmp_path / "rows.csv", skip_invalid=True)
    assert [p.chosen for p in pairs] == ["line 1\r\nline 2"] and report.skipped == {"invalid UTF-8": 1}

    # .jsonl: an invalid UTF-8 line is named or counted, and neither it nor a blank line ends the file
    (tmp_path / "utf.jsonl").write_bytes(json.dumps(good).encode() + b"\n\n" + b'{"prompt": "caf\xe9"}\n' + json.dumps(good).encode() + b"\n")
    with pytest.raises(UserError, match=r"utf.jsonl: row 3: invalid UTF-8 at byte 15$"):
        load_preferences(tmp_path / "utf.jsonl")
    pairs, report = load_preferences(tmp_path / "utf.jsonl", skip_invalid=True)
    assert len(pairs) == 2 and report.to_dict() == {"source": str(tmp_path / "utf.jsonl"), "rows": 3, "pairs": 2, "skipped": {"invalid UTF-8": 1}}
    (tmp_path / "plain.jsonl.gz").write_text(json.dumps(good) + "\n")
    with pytest.raises(UserError, match=r"plain.jsonl.gz: not a gzip file \(rename it to .jsonl if it is plain text\)"):
        load_preferences(tmp_path / "plain.jsonl.gz")
    whole = gzip.compress(json.dumps({**good, "prompt": " ".join(map(str, range(2000)))}).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(UserError, match="cut.jsonl.gz: truncated gzip file: it ends inside row 1$"):
        load_preferences(tmp_path / "cut.jsonl.gz")

    class IterableDatasetDict(dict):  # what a streaming load_dataset without a split returns
        pass

    with pytest.raises(UserError, match=r"<IterableDatasetDict>: choose a split, e.g. data\['train'\] \(splits: train\)"):
        load_preferences(IterableDatasetDict(train=[good]))

    class Rows(list):  # rows that carry a `columns` attribute but are no DataFrame
        columns = ["prompt", "chosen", "rejected"]

    assert len(load_preferences(Rows([good, good]))[0]) == 2

    # drops are counted one by one and the rows after them still read; a mixture of one pair
    panda = {"instruction": "Fix it.", "response1": "the cat", "response2": "teh cat", "annotator1": 1, "annotator2": 2, "annotator3": 0}
    pairs, report = load_preferences([panda, panda, {**panda, "annotator1": 2, "annotator2": 2, "annotator3": 2}])
    assert report.skipped == {"tie (no majority)": 2} and pairs == [PreferencePair(({"role": "user", "content": "Fix it."},), "teh cat", "the cat")]
    assert len(load_preferences(Mixture([[good]], [1], 1))[0]) == 1
    with pytest.raises(UserError, match="row 1: field 'instruction': missing"):  # PandaLM by its three keys alone
        load_preferences([{"response1": "a", "response2": "b", "annotator1": 1}])
    assert load_preferences([{**good, "margin": ""}])[0][0].margin is None

    # explicit prompts in the Anthropic format, under a renamed prompt column
    columns = Columns(prompt_key="question")

    def prompt_of(text):
        return [dict(m) for m in load_preferences([{"question": text, "chosen": "a", "rejected": "b"}], columns)[0][0].prompt]

    assert prompt_of("Human: Hi\n\nAssistant:") == [{"role": "user", "content": "Hi"}]  # the open assistant turn dropped
    assert prompt_of("\n\nHuman: Hi\n\nAssistant: Yo\n\nHuman: More\n\nAssistant:") == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": "More"}]
    assert prompt_of("Human: Hi\n\nAssistant: Yo\n\nHuman:") == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}, {"role": "user", "content": ""}]  # only an assistant turn is dropped
    with pytest.raises(UserError, match="row 1: field 'question': expected a string or a non-empty list"):
        load_preferences([{"question": [], "chosen": "a", "rejected": "b"}], columns)
    two = [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}]
    for key in ("chosen", "rejected"):
        with pytest.raises(UserError, match=f"row 1: field '{key}': with an explicit prompt, a conversational response must be one assistant message"):
            load_preferences([{**good, key: two}])

    # hub names read by the other row loaders use the train split; prompt ids default to their row number
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, split: calls.append(split) or [{"prompt": "Hi", "response": "Yo"}, {"prompt": "Hey"}])
    assert [p.key for p in load_prompts("someorg/prompts")[0]] == ["row 1", "row 2"]
    assert [row for row in parse_rows("someorg/prompts", lambda row, number: number, False, LoadReport("x"))] == [1, 2]
    assert [number for number, _ in read_rows("someorg/prompts")] == [1, 2]
    assert calls == ["train", "train", "train"]
