"""Chat templates rendered like transformers, and the sampling filters against transformers' warpers."""

from __future__ import annotations

import numpy as np
import pytest

from deployft.errors import BundleError, UsageError
from deployft.prompts import read_chat_template, render_chat
from deployft.runtime.sampling import GenerationOptions, _top_k, _top_p, next_tokens

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi <b>&</b>"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "what do bees make"}]
TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' and not loop.first %}"
    "{{ raise_exception('system message must come first') }}{% endif %}"
    "<|{{ m['role'] }}|>{{ m['content'] | tojson }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_transformers(tiny_model, add_generation_prompt):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    tokenizer.chat_template = TEMPLATE
    expected = tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=add_generation_prompt)
    ours = render_chat(TEMPLATE, MESSAGES, {"bos_token": "<s>", "eos_token": "</s>"}, add_generation_prompt)
    assert ours == expected and ours.startswith("<s><|system|>")


def test_template_raise_exception_becomes_usage_error():
    with pytest.raises(UsageError, match="system message must come first"):
        render_chat(TEMPLATE, MESSAGES[1:] + MESSAGES[:1], {"bos_token": "<s>", "eos_token": "</s>"})


def test_template_from_file_or_tokenizer_config(tmp_path):
    assert read_chat_template(tmp_path, {"chat_template": "a"}) == "a"
    assert read_chat_template(tmp_path, {"chat_template": [{"name": "default", "template": "b"}]}) == "b"
    assert read_chat_template(tmp_path, {}) is None
    (tmp_path / "chat_template.jinja").write_text("c")
    assert read_chat_template(tmp_path, {"chat_template": "a"}) == "c"


def test_missing_template_is_a_bundle_error():
    with pytest.raises(BundleError, match="no chat template"):
        render_chat(None, MESSAGES, {})


def test_scores_filters_match_transformers_warpers():
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = np.random.default_rng(0).normal(size=(4, 50)) * 3
    for k in (1, 5, 49):
        expected = TopKLogitsWarper(k)(None, torch.tensor(logits)).numpy()
        np.testing.assert_array_equal(np.isinf(_top_k(logits, k)), np.isinf(expected))
    for p in (0.1, 0.5, 0.9, 1.0):
        expected = TopPLogitsWarper(p)(None, torch.tensor(logits)).numpy()
        np.testing.assert_array_equal(np.isinf(_top_p(logits, p)), np.isinf(expected))


def test_sampling_follows_the_distribution():
    logits = np.log(np.array([[0.1, 0.2, 0.7]]))
    rng = np.random.default_rng(0)
    options = GenerationOptions(temperature=1.0)
    draws = np.array([next_tokens(logits, options, rng)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.1, 0.2, 0.7], atol=0.03)
    top = GenerationOptions(temperature=1.0, top_p=0.6)
    assert {int(next_tokens(logits, top, rng)[0]) for _ in range(200)} == {2}


def test_each_row_draws_from_its_own_generator():
    logits = np.log(np.full((3, 50), 1 / 50))
    options = GenerationOptions(temperature=1.0)
    rows = next_tokens(logits, options, [np.random.default_rng(seed) for seed in (1, 2, 1)])
    alone = [next_tokens(logits[:1], options, np.random.default_rng(seed))[0] for seed in (1, 2, 1)]
    assert rows.tolist() == alone and rows[0] == rows[2]  # a row's draw ignores the rows beside it


def test_greedy_is_argmax():
    logits = np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]])
    assert next_tokens(logits, GenerationOptions(), np.random.default_rng(0)).tolist() == [1, 0]


@pytest.mark.parametrize("kwargs, match", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 2.5}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_p": 1.01}, "top_p"),
    ({"top_k": -3}, "top_k"), ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": float("inf")}, "temperature"), ({"temperature": True}, "temperature"),
    ({"temperature": "0.7"}, "temperature"), ({"top_k": True}, "top_k"), ({"top_k": 2.0}, "top_k"),
    ({"top_p": True}, "top_p"), ({"top_p": float("nan")}, "top_p"), ({"top_p": "0.9"}, "top_p"),
])
def test_options_validate(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GenerationOptions(**kwargs)


def test_stop_accepts_a_string():
    assert GenerationOptions(stop="\n").stop == ("\n",)
    assert GenerationOptions(stop=["", "x"]).stop == ("x",)


def test_text_tracker_holds_back_stop_prefixes_and_partial_characters():
    from deployft.runtime.detokenize import TextTracker

    pieces = {1: "ab", 2: "c", 3: "\ufffd", 4: "d", 5: "END", 9: "zz"}
    tracker = TextTracker(lambda ids: "".join(pieces[i] for i in ids).replace("\ufffdd", "é"), ("cEN",), {9})
    assert tracker.add(1) == "ab"
    assert tracker.add(2) == ""  # "c" may start the stop string "cEN"
    assert tracker.add(3) == ""  # an incomplete character waits for its next byte
    assert tracker.add(4) == "cé"
    assert tracker.add(9) == "" and tracker.finished and tracker.text == "abcé"
    stopped = TextTracker(lambda ids: "".join(pieces[i] for i in ids), ("cEN",), {9})
    assert [stopped.add(t) for t in (1, 2, 5)] == ["ab", "", ""]
    assert stopped.finished and stopped.text == "ab"


@pytest.mark.parametrize("kind", ["byte-level", "wordpiece"])
def test_text_tracker_pieces_join_to_the_whole_decode(kind):
    """Pieces (decoded a window at a time) plus the flush equal decoding every id at once, through characters
    split over several byte tokens, special tokens that decode to nothing, and WordPiece's joined sub-words."""
    from conftest import _bpe_tokenizer, _wordpiece_tokenizer
    from deployft.runtime.detokenize import TextTracker

    tokenizer = _bpe_tokenizer(None) if kind == "byte-level" else _wordpiece_tokenizer(["input_ids"])
    text = "hello world, answering questions: café, naïve, 東京 and 🚀 rockets; the end."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = ids[:5] + [tokenizer.pad_token_id] + ids[5:]
    assert len(ids) > 20
    decode = lambda part: tokenizer.decode(part, skip_special_tokens=True)  # noqa: E731
    tracker = TextTracker(decode, (), set())
    pieces = [tracker.add(t) for t in ids] + [tracker.flush()]
    assert "".join(pieces) == tracker.text == decode(ids)
    if kind == "byte-level":  # the rocket's four bytes are four tokens: held back until the last one
        assert len(tokenizer("🚀", add_special_tokens=False)["input_ids"]) > 1
        assert any("🚀" in p for p in pieces) and not any("\ufffd" in p for p in pieces)


def test_text_tracker_decodes_each_id_a_bounded_number_of_times():
    """A long generation: the ids handed to the decoder grow linearly with the tokens, not quadratically."""
    from deployft.runtime.detokenize import CONTEXT_PIECES, TextTracker

    decoded = []

    def decode(ids):
        decoded.append(len(ids))
        return "".join(f"w{i} " for i in ids)

    tracker = TextTracker(decode, ("STOP",), set())
    for token in range(2000):
        tracker.add(token)
    assert tracker.flush() == "" and tracker.text == decode(list(range(2000)))
    # each token decodes its context (CONTEXT_PIECES pieces) twice and itself once; a whole decode per token would
    # be about 2,000,000
    assert sum(decoded[:-1]) <= (2 * CONTEXT_PIECES + 1) * 2000


def test_text_tracker_finds_stops_across_three_pieces_and_the_earliest_of_several():
    from deployft.runtime.detokenize import TextTracker

    pieces = {1: "ab", 2: "cE", 3: "N", 4: "xyz", 5: "--"}
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    tracker = TextTracker(decode, ("zz", "cEN"), set())
    assert [tracker.add(t) for t in (1, 2)] == ["ab", ""]  # "cE" may begin "cEN"
    assert tracker.add(3) == "" and tracker.finished and tracker.text == "ab"
    several = TextTracker(decode, ("Nxyz-", "yz", "abcEN"), set())
    assert [several.add(t) for t in (1, 2, 3, 4)][-1] == ""
    assert several.finished and several.text == ""  # "abcEN" starts first


def test_text_tracker_follows_a_decoder_that_rewrites_its_context():
    """A decoder that cleans the space before punctuation turns " ." into "." only once more text follows: the text
    resumes from where it agrees with the whole decode; the space already shown stays shown, nothing is lost."""
    from deployft.runtime.detokenize import TextTracker

    pieces = {1: "x", 2: " ", 3: ".", 4: " foo", 5: " bar"}
    decode = lambda ids: "".join(pieces[i] for i in ids).replace(" .", ".")  # noqa: E731
    tracker = TextTracker(decode, (), set())
    shown = [tracker.add(t) for t in (1, 2, 3, 4, 5)] + [tracker.flush()]
    assert tracker.text == decode([1, 2, 3, 4, 5]) == "x. foo bar"
    assert "".join(shown) == "x . foo bar"


def test_text_tracker_stops_at_once_when_a_stop_string_precedes_an_incomplete_character():
    from deployft.runtime.detokenize import TextTracker

    pieces = {1: "ok", 2: "\n\ufffd", 3: "d"}
    tracker = TextTracker(lambda ids: "".join(pieces[i] for i in ids).replace("\ufffdd", "é"), ("\n",), set())
    assert tracker.add(1) == "ok"
    assert tracker.add(2) == "" and tracker.finished and tracker.text == "ok"
