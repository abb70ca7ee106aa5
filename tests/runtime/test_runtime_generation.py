"""KV-cache generation: parity with transformers, sampling, stop strings, streaming, batches, chat prompts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deployft.errors import UsageError
from deployft.prompts import PromptFormat
from deployft.runtime import Predictor

PROMPTS = ["what color is the sky", "what do bees make", "the film was great and the cast"]


def _torch_model(bundle):
    from transformers import AutoModelForCausalLM

    source = json.loads((bundle / "deployft.json").read_text())["source_run"]["path"]
    return AutoModelForCausalLM.from_pretrained(source).eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_greedy_tokens_equal_transformers_generate(runtime_bundle, arch):
    import torch

    bundle = runtime_bundle(arch)
    predictor, model = Predictor.load(bundle), _torch_model(bundle)
    for prompt in PROMPTS:
        ids = predictor.prompt_ids(prompt)
        ours = list(predictor.iter_token_ids(ids, max_new_tokens=20))
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=20, do_sample=False, pad_token_id=predictor.decoder.pad_id)
        assert ours == out[0, len(ids):].tolist()
        assert len(set(ours)) > 3  # the tiny model really produces varied text, so the comparison means something


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_generation_uses_every_position_like_transformers(runtime_bundle, arch, caplog):
    import torch

    bundle = runtime_bundle(arch)
    predictor, model = Predictor.load(bundle), _torch_model(bundle)
    positions = predictor.decoder.max_positions
    ids = torch.tensor([np.random.default_rng(0).integers(3, 200, size=positions - 4).tolist()])
    with caplog.at_level("WARNING", logger="deployft"):
        ours = list(predictor.iter_token_ids(ids[0].tolist(), max_new_tokens=8, ignore_eos=True))
    theirs = []
    with torch.no_grad():  # the 5th token is predicted at the last position; it is never fed back
        for _ in range(5):
            theirs.append(int(model(input_ids=ids).logits[0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[theirs[-1]]])], dim=1)
    assert ours == theirs
    assert "max_new_tokens 8 cut to 5" in caplog.text


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batch_generation_equals_one_by_one(runtime_bundle, arch):
    predictor = Predictor.load(runtime_bundle(arch))
    batch = predictor.generate(PROMPTS, max_new_tokens=12)
    assert batch == [predictor.generate(p, max_new_tokens=12) for p in PROMPTS]
    assert len({len(predictor.prompt_ids(p)) for p in PROMPTS}) > 1  # really left-padded


def test_generate_text_is_decoded_tokens(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    ids = predictor.prompt_ids(PROMPTS[0])
    tokens = list(predictor.iter_token_ids(ids, max_new_tokens=10))
    eos = set(predictor.decoder.eos_ids.tolist())
    assert predictor.generate(PROMPTS[0], max_new_tokens=10) == predictor.codec.decode(
        [t for t in tokens if t not in eos])


def test_sampling_is_reproducible_with_a_seed(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("llama"))
    settings = {"max_new_tokens": 16, "temperature": 1.0, "top_k": 50, "top_p": 0.95}
    first = predictor.generate(PROMPTS[0], seed=3, **settings)
    assert first == predictor.generate(PROMPTS[0], seed=3, **settings)
    others = {predictor.generate(PROMPTS[0], seed=s, **settings) for s in range(4, 9)}
    assert others - {first}, "different seeds should give some different texts"


SAMPLED = {"max_new_tokens": 16, "temperature": 1.0, "seed": 11}


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_seeded_row_samples_the_same_text_alone_or_in_any_batch(runtime_bundle, arch):
    predictor = Predictor.load(runtime_bundle(arch))
    alone = [predictor.generate(p, **SAMPLED) for p in PROMPTS]
    assert predictor.generate(PROMPTS, **SAMPLED) == alone
    assert predictor.generate(PROMPTS[::-1], **SAMPLED) == alone[::-1]
    assert predictor.generate([PROMPTS[1]] * 3, **SAMPLED) == [alone[1]] * 3  # same prompt, same seed: same text
    assert len(set(alone)) == 3 and alone != predictor.generate(PROMPTS, **{**SAMPLED, "temperature": 0.0})


def test_the_server_samples_what_the_predictor_samples(runtime_bundle):
    """The serve engine gives each request its own generator: its text equals `generate` alone and in a batch."""
    from deployft.runtime import GenerationOptions
    from deployft.serve.engine import GenerationEngine, Ticket

    predictor = Predictor.load(runtime_bundle("llama"))
    engine = GenerationEngine(predictor, max_batch_size=8, max_queue=8)
    sinks = [[] for _ in PROMPTS]
    for prompt, sink in zip(PROMPTS, sinks):
        engine.submit(Ticket(predictor.prompt_ids(prompt), GenerationOptions(**SAMPLED), sink.append))
    for _ in range(200):
        if all(sink and sink[-1].finish_reason for sink in sinks):
            break
        engine.run_once()
    served = ["".join(chunk.text for chunk in sink) for sink in sinks]
    assert served == [predictor.generate(p, **SAMPLED) for p in PROMPTS] == predictor.generate(PROMPTS, **SAMPLED)


def test_top_k_one_is_greedy(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    greedy = predictor.generate(PROMPTS[1], max_new_tokens=10)
    assert predictor.generate(PROMPTS[1], max_new_tokens=10, temperature=0.7, top_k=1, seed=0) == greedy


def test_stream_pieces_concatenate_to_generate(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("llama"))
    for prompt in PROMPTS:
        pieces = list(predictor.stream(prompt, max_new_tokens=16))
        assert len(pieces) > 1
        assert "".join(pieces) == predictor.generate(prompt, max_new_tokens=16)


def test_stop_string_ends_text_before_it(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    full = predictor.generate(PROMPTS[0], max_new_tokens=20)
    stop = full[5:8]
    cut = predictor.generate(PROMPTS[0], max_new_tokens=20, stop=[stop])
    assert cut == full[: full.index(stop)]
    streamed = "".join(predictor.stream(PROMPTS[0], max_new_tokens=20, stop=stop))
    assert streamed == cut


def test_stop_string_in_batch_only_ends_its_row(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    full = predictor.generate(PROMPTS, max_new_tokens=12)
    stop = full[0][3:6]
    cut = predictor.generate(PROMPTS, max_new_tokens=12, stop=stop)
    for whole, short in zip(full, cut):
        assert short == (whole[: whole.index(stop)] if stop in whole else whole)


def test_chat_messages_use_the_bundle_template(runtime_bundle):
    from transformers import AutoTokenizer

    bundle = runtime_bundle("llama")
    predictor = Predictor.load(bundle)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what do bees make"}]
    expected = AutoTokenizer.from_pretrained(bundle).apply_chat_template(messages, add_generation_prompt=True)
    cut = list(expected)[-(predictor.max_length // 2):]  # a prompt keeps its last half-max_length tokens
    assert len(cut) < len(expected) and predictor.prompt_ids(messages) == cut
    assert predictor.generate(messages, max_new_tokens=5) == predictor.codec.decode(
        [t for t in predictor.iter_token_ids(cut, max_new_tokens=5) if t not in predictor.decoder.eos_ids])
    predictor.max_length = 4 * len(expected)
    assert predictor.prompt_ids(messages) == list(expected)


def test_chat_style_bundle_wraps_a_string_prompt_as_a_user_message(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("llama"))
    assert predictor.prompt_ids("hello") == predictor.prompt_ids([{"role": "user", "content": "hello"}])


def test_plain_style_appends_the_separator(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    assert predictor.prompt_ids("hello") == predictor.codec.encode_one("hello\n", True)


def test_empty_prompt_starts_from_bos(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    predictor.prompt_format = PromptFormat("text")  # no separator: the prompt has no tokens at all
    assert predictor.prompt_ids("") == [predictor.bos_id]
    assert isinstance(predictor.generate("", max_new_tokens=4), str)
    assert predictor.generate(["", "hi"], max_new_tokens=4)[0] == predictor.generate("", max_new_tokens=4)


def test_long_prompt_keeps_its_end_as_training_did_and_fits_the_positions(runtime_bundle, caplog):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    positions, limit = predictor.decoder.max_positions, predictor.max_length // 2
    long = "the film was great " * 200 + "what do bees make"
    with caplog.at_level("INFO", logger="deployft"):
        ids = predictor.prompt_ids(long)
        text = predictor.generate(long, max_new_tokens=positions)
    assert len(ids) == limit  # half of the bundle's max_length, the prompt budget training used
    assert ids[-8:] == predictor.prompt_ids("the film was great what do bees make")[-8:]
    assert f"cut to its last {limit}" in caplog.text
    assert f"max_new_tokens {positions} cut to {positions - limit + 1}" in caplog.text
    assert isinstance(text, str)


def test_threads_share_one_predictor(runtime_bundle):
    from concurrent.futures import ThreadPoolExecutor

    predictor = Predictor.load(runtime_bundle("llama"), threads=1)
    jobs = [(p, s) for p in PROMPTS for s in (1, 2)] * 3
    alone = [predictor.generate(p, max_new_tokens=10, temperature=0.8, seed=s) for p, s in jobs]
    with ThreadPoolExecutor(max_workers=6) as pool:
        together = list(pool.map(lambda job: predictor.generate(job[0], max_new_tokens=10, temperature=0.8,
                                                                seed=job[1]), jobs))
    assert together == alone


def test_int8_variant_generates(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"), model_file="model_int8.onnx")
    assert predictor.model_file == "model_int8.onnx"
    tokens = list(predictor.iter_token_ids(predictor.prompt_ids("hi"), max_new_tokens=5, ignore_eos=True))
    fp32 = Predictor.load(runtime_bundle("gpt2"))
    assert len(tokens) == 5 and tokens[0] == next(fp32.iter_token_ids(fp32.prompt_ids("hi"), max_new_tokens=1))


@pytest.mark.parametrize("settings, flag", [
    ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p"), ({"temperature": -0.1}, "temperature"),
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_k": -1}, "top_k"),
])
def test_bad_generation_settings_raise_value_errors(runtime_bundle, settings, flag):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    with pytest.raises(ValueError, match=flag):
        predictor.generate("hi", **settings)
    with pytest.raises(ValueError, match=flag):
        next(predictor.stream("hi", **settings))


@pytest.mark.parametrize("prompt", [None, [], [1, 2], ["a", {"role": "user", "content": "b"}], 5])
def test_bad_prompts_raise_usage_errors(runtime_bundle, prompt):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    with pytest.raises(UsageError, match="prompt must be"):
        predictor.generate(prompt)


def test_bad_chat_messages_name_the_fix(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("llama"))
    with pytest.raises(UsageError, match="role"):
        predictor.generate([{"content": "no role"}])


def test_messages_on_a_bundle_without_template(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    with pytest.raises(ValueError, match="no chat template"):
        predictor.generate([{"role": "user", "content": "hi"}])


def test_classification_calls_on_a_generator_are_refused(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    with pytest.raises(ValueError, match="classify bundle.*generate"):
        predictor.predict("text")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_forward_on_a_generator_gives_every_position_like_transformers(runtime_bundle, arch):
    import torch

    bundle = runtime_bundle(arch)
    predictor, model = Predictor.load(bundle), _torch_model(bundle)
    rows = [predictor.prompt_ids(p) for p in PROMPTS[:2]]
    width = max(map(len, rows))
    ids = np.array([r + [predictor.decoder.pad_id] * (width - len(r)) for r in rows], dtype=np.int64)
    mask = np.array([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=np.int64)
    logits = predictor.forward(ids, mask)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    assert logits.shape == expected.shape
    np.testing.assert_allclose(logits[mask == 1], expected[mask == 1], atol=1e-4)


def test_stream_yields_before_generation_ends(runtime_bundle, monkeypatch):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    steps = []
    original = predictor.decoder.step
    monkeypatch.setattr(predictor.decoder, "step", lambda *args: steps.append(1) or original(*args))
    pieces = predictor.stream("what color is the sky", max_new_tokens=30)
    next(pieces)
    assert len(steps) < 30  # the first piece came out while decoding was still going on
    rest = list(pieces)
    assert rest and len(steps) == 30


def _fp16_bundle(source, folder, keep_io_types: bool):
    import shutil

    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from deployft.exporter.quantize import convert_fp16
    from deployft.manifest import file_table, read_manifest, write_manifest

    bundle = shutil.copytree(source, folder)
    if keep_io_types:  # the file `deployft export --quantize fp16` writes
        convert_fp16(bundle / "model.onnx", bundle / "model_fp16.onnx")
    else:
        onnx.save(convert_float_to_float16(onnx.load(bundle / "model.onnx"), keep_io_types=False),
                  bundle / "model_fp16.onnx")
    manifest = read_manifest(bundle, "bundle")
    write_manifest(bundle, {**manifest, "files": file_table(bundle)})
    return bundle


@pytest.mark.parametrize("keep_io_types, cache_dtype", [(True, np.float32), (False, np.float16)])
def test_fp16_decoder_files_decode_like_fp32(runtime_bundle, tmp_path, keep_io_types, cache_dtype):
    bundle = _fp16_bundle(runtime_bundle("llama"), tmp_path / "bundle", keep_io_types)
    fp16 = Predictor.load(bundle, model_file="model_fp16.onnx")
    fp32 = Predictor.load(bundle)
    assert fp16.decoder.past_dtype == cache_dtype
    ids = fp32.prompt_ids(PROMPTS[0])
    tokens16 = list(fp16.iter_token_ids(ids, max_new_tokens=6, ignore_eos=True))
    tokens32 = list(fp32.iter_token_ids(ids, max_new_tokens=6, ignore_eos=True))
    assert len(tokens16) == len(tokens32) == 6 and tokens16[0] == tokens32[0]
    logits16 = fp16.forward(*fp16.codec.pad([ids], side="left"))
    logits32 = fp32.forward(*fp32.codec.pad([ids], side="left"))
    assert logits16.dtype == np.float32 and np.abs(logits16 - logits32).max() < 0.05 * np.abs(logits32).max()
    batched = fp16.generate(PROMPTS, max_new_tokens=4)  # left-padded rows through the fp16 cache
    assert batched == [fp16.generate(p, max_new_tokens=4) for p in PROMPTS]


def test_ignore_eos_runs_to_max_new_tokens(runtime_bundle):
    from deployft.runtime.generation import KVDecoder

    predictor = Predictor.load(runtime_bundle("gpt2"))
    ids = predictor.prompt_ids(PROMPTS[0])
    first = next(predictor.iter_token_ids(ids, max_new_tokens=1))
    old = predictor.decoder  # make the first greedy token an end token
    predictor.decoder = KVDecoder(predictor.session, predictor.device, [first], old.pad_id, old.max_positions)
    assert list(predictor.iter_token_ids(ids, max_new_tokens=6)) == [first]
    tokens = list(predictor.iter_token_ids(ids, max_new_tokens=6, ignore_eos=True))
    assert len(tokens) == 6 and tokens[0] == first
