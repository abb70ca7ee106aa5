"""What callers pass to a Predictor: token ids, stop strings, prompt batches, extreme temperatures; a long prompt's cut
is warned about once per call."""

from __future__ import annotations

import numpy as np
import pytest

from deployft.errors import UsageError
from deployft.runtime import GenerationOptions, Predictor
from deployft.runtime.sampling import next_tokens


@pytest.fixture(scope="module")
def generator(runtime_bundle):
    return Predictor.load(runtime_bundle("gpt2"), threads=1)


@pytest.fixture(scope="module")
def classifier(runtime_bundle):
    return Predictor.load(runtime_bundle("bert"), threads=1)


@pytest.mark.parametrize("stop", [5, [5], ["a", 3], (None,)])
def test_a_stop_that_is_not_a_string_is_a_usage_error_naming_stop(generator, stop):
    with pytest.raises(UsageError, match=r"^stop must be a string or a list of strings, got .*; pass stop="):
        generator.generate("hi", max_new_tokens=2, stop=stop)
    with pytest.raises(UsageError, match="^stop must be"):
        next(generator.stream("hi", max_new_tokens=2, stop=stop))
    with pytest.raises(UsageError, match="^stop must be"):
        GenerationOptions(stop=stop)


def test_stop_strings_are_kept_as_a_tuple_without_empty_ones():
    assert GenerationOptions(stop=None).stop == ()
    assert GenerationOptions(stop=("a", "", "b")).stop == GenerationOptions(stop=["a", "", "b"]).stop == ("a", "b")


@pytest.mark.parametrize("ids, found", [([-1], "-1"), ([1.5], "1.5"), ([3, True], "True"), (["7"], "'7'")])
def test_token_ids_outside_the_vocabulary_or_not_integers_are_refused(generator, ids, found):
    with pytest.raises(UsageError, match=rf"token id {found} at position \d is not an integer in \[0, "
                                         rf"{generator.vocab_size}\)"):
        next(generator.iter_token_ids(ids, max_new_tokens=2))


def test_a_token_id_past_the_vocabulary_is_a_usage_error_not_an_onnxruntime_error(generator):
    assert generator.vocab_size == 400  # the tiny gpt2's config.json vocab_size
    with pytest.raises(UsageError, match=r"token id 400 at position 1 .*pass ids from the bundle's tokenizer"):
        next(generator.iter_token_ids([1, 400], max_new_tokens=2))
    ok = generator.iter_token_ids(np.array([1, 399]), max_new_tokens=2, ignore_eos=True)
    assert len(list(ok)) == 2  # numpy integers are ids too


def test_predict_ids_checks_its_ids_and_batch_size(classifier):
    ids = classifier.codec.encode(["a warm film", "a dull one"])
    assert classifier.predict_ids(ids) == classifier.predict(["a warm film", "a dull one"])
    with pytest.raises(UsageError, match="batch_size must be an integer >= 1, got 0"):
        classifier.predict_ids(ids, batch_size=0)
    with pytest.raises(UsageError, match=r"predict_ids\(\) row 1 token id -5 at position 0"):
        classifier.predict_ids([[1], [-5]])
    with pytest.raises(UsageError, match=r"predict_ids\(\) row 0 takes a list of token ids, got int"):
        classifier.predict_ids([1, 2])
    with pytest.raises(UsageError, match=r"predict_ids\(\) takes a list of token-id lists, got str"):
        classifier.predict_ids("a warm film")


def test_a_temperature_near_the_float_limit_samples_the_most_likely_token():
    logits = np.array([[1.0, 3.0, 2.0], [-4.0, -5.0, -4.5]], dtype=np.float32)
    for temperature in (5e-324, 1e-300, 1e-30):
        options = GenerationOptions(temperature=temperature, seed=0)
        chosen = next_tokens(logits, options, [np.random.default_rng(0), np.random.default_rng(1)])
        assert chosen.tolist() == [1, 0]


def test_a_tiny_temperature_generates_the_greedy_text(generator):
    greedy = generator.generate("what do bees make", max_new_tokens=6)
    assert generator.generate("what do bees make", max_new_tokens=6, temperature=5e-324, seed=1) == greedy


def test_a_tuple_of_prompts_is_a_batch_like_a_list(generator):
    assert generator.generate(("hi", "what color"), max_new_tokens=3) == \
        generator.generate(["hi", "what color"], max_new_tokens=3)


@pytest.mark.parametrize("prompt, found", [([1, 2], "a list of int; pass token ids to iter_token_ids()"),
                                           ([], "an empty list"), (["a", 3], "a list of int, str"),
                                           (None, "NoneType")])
def test_a_refused_prompt_says_what_it_was(generator, prompt, found):
    with pytest.raises(UsageError, match="^a prompt must be a string") as info:
        generator.generate(prompt)
    assert str(info.value).endswith(f"got {found}")


def _cut_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "were cut to their last" in r.getMessage()]


def test_long_prompts_are_cut_with_one_warning_per_call(generator, caplog):
    limit, long = generator.max_length // 2, "the film was great " * 40
    with caplog.at_level("WARNING", logger="deployft"):
        texts = generator.generate([long, "hi", long], max_new_tokens=2)
    assert _cut_warnings(caplog) == [f"2 of 3 prompt(s) longer than {limit} tokens were cut to their last {limit} "
                                     f"tokens (half of the bundle's max_length {generator.max_length}, as training "
                                     "cut them)"]
    assert all(r.levelname == "WARNING" for r in caplog.records if "were cut to their last" in r.getMessage())
    assert texts[0] == texts[2] == generator.generate(long, max_new_tokens=2)
    caplog.clear()
    with caplog.at_level("WARNING", logger="deployft"):
        streamed = "".join(generator.stream(long, max_new_tokens=2))
        generator.generate("hi", max_new_tokens=2)
    assert _cut_warnings(caplog) == [f"1 of 1 prompt(s) longer than {limit} tokens were cut to their last {limit} "
                                     f"tokens (half of the bundle's max_length {generator.max_length}, as training "
                                     "cut them)"]
    assert streamed == texts[0]


def test_a_lone_surrogate_is_a_usage_error_naming_the_text(classifier, generator):
    from click.testing import CliRunner

    from deployft.cli import main

    # a byte that is not UTF-8 in a command-line argument arrives as one; the tokenizer would raise a TypeError
    with pytest.raises(UsageError, match=r"^predict\(\) item 1 holds a lone UTF-16 surrogate \(U\+DCFF\) at "
                                         "character 3, which is not valid text; pass Unicode text"):
        classifier.predict(["fine", "ok \udcff there"])
    with pytest.raises(UsageError, match=r"^the prompt holds a lone UTF-16 surrogate \(U\+DCFF\) at character 3"):
        generator.generate("ok \udcff", max_new_tokens=2)
    with pytest.raises(UsageError, match=r"^prompt 1 holds a lone UTF-16 surrogate"):
        generator.generate(["fine", "ok \udcff"], max_new_tokens=2)
    result = CliRunner().invoke(main, ["predict", str(classifier.folder), "ok \udcff there"])
    assert result.exit_code == 1 and result.output.startswith("Error: predict() item 0 holds a lone UTF-16")
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


@pytest.mark.parametrize("message, found", [
    ({"role": "user", "content": None}, "chat message 0's content is NoneType 'None', not a string"),
    ({"role": "user", "content": 5}, "chat message 0's content is int '5', not a string"),
    ({"role": "user", "content": [{"type": "text", "text": "hi"}]}, "chat message 0's content is list"),
    ({"role": None, "content": "hi"}, "chat message 0's role is NoneType 'None', not a string"),
    ({"role": "user", "content": "ok \udcff"}, "chat message 0's content holds a lone UTF-16 surrogate (U+DCFF)"),
])
def test_a_chat_message_that_is_not_text_is_the_callers_error_not_the_bundles(runtime_bundle, message, found):
    chat = Predictor.load(runtime_bundle("llama"), threads=1)
    with pytest.raises(UsageError) as caught:
        chat.generate([message], max_new_tokens=2)
    assert str(caught.value).startswith(found)
