"""Decoding as transformers decodes: the tokenizer config's `clean_up_tokenization_spaces`, streamed and whole."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from deployft.runtime import Predictor
from deployft.runtime.detokenize import TextTracker

TEXT = "hello , world . it 's fine , is n't it ? yes ! we 're sure they 've i 'm"


@pytest.fixture(scope="module")
def cleanup_bundle(runtime_bundle, tmp_path_factory):
    """The tiny gpt2 bundle with `clean_up_tokenization_spaces: true` in its tokenizer_config.json (re-listed)."""
    from deployft.manifest import file_table, read_manifest, write_manifest

    bundle = shutil.copytree(runtime_bundle("gpt2"), tmp_path_factory.mktemp("cleanup") / "bundle")
    path = bundle / "tokenizer_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "clean_up_tokenization_spaces": True}))
    write_manifest(bundle, {**read_manifest(bundle, "bundle"), "files": file_table(bundle)})
    return bundle


def test_decode_cleans_up_spaces_where_the_tokenizer_config_asks_as_transformers_does(cleanup_bundle, runtime_bundle):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cleanup_bundle)
    codec = Predictor.load(cleanup_bundle).codec
    ids = codec.encode_one(TEXT, False)
    assert tokenizer.clean_up_tokenization_spaces and codec.clean_up_spaces
    assert codec.decode(ids) == tokenizer.decode(ids, skip_special_tokens=True)
    assert codec.decode(ids) == "hello, world. it's fine, isn't it? yes! we're sure they've i'm"
    plain = Predictor.load(runtime_bundle("gpt2")).codec  # its config says false: the text as the tokens spell it
    assert not plain.clean_up_spaces and plain.decode(plain.encode_one(TEXT, False)) == TEXT


def test_generated_text_is_the_transformers_decode_of_the_tokens(cleanup_bundle):
    from transformers import AutoTokenizer

    tokenizer, predictor = AutoTokenizer.from_pretrained(cleanup_bundle), Predictor.load(cleanup_bundle)
    for prompt in ("hello , world", "what do bees make"):
        tokens = list(predictor.iter_token_ids(predictor.prompt_ids(prompt), max_new_tokens=24))
        assert predictor.generate(prompt, max_new_tokens=24) == tokenizer.decode(tokens, skip_special_tokens=True)


def _documented_stream(decode, ids) -> str:
    """The stream Predictor.stream documents: each token adds what the whole decode adds after the text shown; where
    the whole decode rewrote text already shown, it goes on from the first character that differs (a piece already
    yielded is never taken back)."""
    shown, text = "", ""
    for end in range(1, len(ids) + 1):
        whole = decode(ids[:end])
        shown += whole[len(os.path.commonprefix([text, whole])):]
        text = whole
    return shown


def test_streamed_pieces_follow_the_documented_rule_under_clean_up(cleanup_bundle):
    codec = Predictor.load(cleanup_bundle).codec
    ids = codec.encode_one(TEXT, False)
    tracker = TextTracker(codec.decode, (), set())
    pieces = [tracker.add(t) for t in ids] + [tracker.flush()]
    assert tracker.text == codec.decode(ids)  # what generate returns
    assert "".join(pieces) == _documented_stream(codec.decode, ids)
