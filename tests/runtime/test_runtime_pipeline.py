"""The runtime on bundles written by `deployft export` from RUNs written by `deployft finetune` (the folder contract)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import qa_rows, sentiment_rows
from deployft.manifest import read_manifest
from deployft.runtime import Predictor


def _export(run, root, quantize="int8"):
    from deployft.exporter import ExportConfig, export

    # these tests compare the runtime with PyTorch on every file export writes, including int8 files of
    # barely trained tiny models that the guard would refuse: the guard is tested in tests/exporter/test_guard.py
    # (the widest budget each task takes: every prediction of a classifier, any perplexity rise of a generator)
    budget = 100 if read_manifest(run, "run")["task"] == "classify" else 1000
    return export(ExportConfig(run=run, output=root / "bundle", quantize=quantize, validate_samples=16,
                               max_accuracy_drop=budget))


@pytest.fixture(scope="module")
def generate_bundle(tiny_generate_run, tmp_path_factory):
    return _export(tiny_generate_run, tmp_path_factory.mktemp("pipeline-generate"))


@pytest.fixture(scope="module")
def classify_bundle(tiny_classify_run, tmp_path_factory):
    # fp32 only: the export and optimized graphs; int8 classifiers are covered by test_export and runtime_bundle
    return _export(tiny_classify_run, tmp_path_factory.mktemp("pipeline-classify"), quantize="none")


def _variants(bundle, precision=None, optimized=None):
    variants = json.loads((bundle / "deployft.json").read_text())["variants"]
    return [name for name, v in variants.items()
            if precision in (None, v["precision"]) and optimized in (None, v["optimized"])]


@pytest.mark.parametrize("words", [3, 200])
def test_training_validation_and_predictor_format_and_truncate_a_prompt_alike(generate_bundle, tiny_generate_run,
                                                                               words):
    """A chat prompt, short or far longer than max_length: training's features, export validation's samples and
    Predictor.prompt_ids hold the same prompt tokens (the last max_length // 2 of the rendered chat)."""
    from transformers import AutoTokenizer

    from deployft.exporter.samples import encode
    from deployft.exporter.source import read_source
    from deployft.tasks import get_task
    from deployft.train.collate import IGNORE_INDEX

    predictor = Predictor.load(generate_bundle)
    tokenizer = AutoTokenizer.from_pretrained(tiny_generate_run)
    manifest = predictor.manifest
    assert manifest["prompt_format"]["style"] == "chat"
    row = {"prompt": " ".join(["the cast was charming"] * words) + " what do bees make", "response": "bees make honey"}
    (feature,) = get_task("generate").encode([row], tokenizer, manifest["max_length"],
                                             prompt_format=manifest["prompt_format"])
    trained = feature["input_ids"][:next(i for i, x in enumerate(feature["labels"]) if x != IGNORE_INDEX)]
    validated = encode(read_source(tiny_generate_run), tokenizer, [row], "eval data")
    served = predictor.prompt_ids(row["prompt"])
    assert served == trained == validated.prompts[0]
    assert validated.sequences[0][:len(served)] == served
    whole = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], add_generation_prompt=True)
    if words > 10:
        assert len(served) == manifest["max_length"] // 2 < len(whole)
    assert served == list(whole)[-len(served):]  # the end of the chat, with its generation prompt, is kept


def test_fp32_variants_decode_exactly_like_transformers(generate_bundle, tiny_generate_run):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_generate_run).eval()
    for name in _variants(generate_bundle, "fp32"):
        predictor = Predictor.load(generate_bundle, model_file=name)
        for row in qa_rows(3, seed=2):
            ids = predictor.prompt_ids(row["prompt"])
            with torch.no_grad():
                out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=16, do_sample=False)
            assert list(predictor.iter_token_ids(ids, max_new_tokens=16)) == out[0, len(ids):].tolist(), name


def test_deployable_variant_generates_and_streams(generate_bundle):
    predictor = Predictor.load(generate_bundle)
    assert predictor.model_file == json.loads((generate_bundle / "deployft.json").read_text())["model_file"]
    prompts = [r["prompt"] for r in qa_rows(3, seed=3)]
    texts = predictor.generate(prompts, max_new_tokens=12)
    assert texts == ["".join(predictor.stream(p, max_new_tokens=12)) for p in prompts]


def test_classifier_bundle_agrees_with_the_run(classify_bundle, tiny_classify_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = [r["text"] for r in sentiment_rows(64, seed=9)]
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classify_run).eval()
    batch = AutoTokenizer.from_pretrained(tiny_classify_run)(texts, padding=True, truncation=True, max_length=32,
                                                             return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model(**batch).logits, -1).numpy()
    labels = json.loads((tiny_classify_run / "deployft.json").read_text())["labels"]
    for name in _variants(classify_bundle):
        predictor = Predictor.load(classify_bundle, model_file=name)
        assert predictor.labels == labels
        got = np.array([[p.scores[lab] for lab in labels] for p in predictor.predict(texts)])
        if predictor.manifest["variants"][name]["precision"] == "fp32":
            np.testing.assert_allclose(got, expected, atol=1e-4)
        else:
            assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.9, name


def test_every_generator_variant_decodes_a_left_padded_batch_like_single_prompts(generate_bundle):
    """The attention-fused graphs mask padding themselves (GroupQueryAttention's bias): check it on every file."""
    prompts = [r["prompt"] for r in qa_rows(4, seed=5)]
    for name in _variants(generate_bundle):
        predictor = Predictor.load(generate_bundle, model_file=name)
        ids = [predictor.prompt_ids(p) for p in prompts]
        assert len({len(i) for i in ids}) > 1  # the batch really is padded
        batched = predictor.generate(prompts, max_new_tokens=10)
        assert batched == [predictor.generate(p, max_new_tokens=10) for p in prompts], name
        width = max(len(i) for i in ids)
        padded = np.array([i + [0] * (width - len(i)) for i in ids], dtype=np.int64)
        mask = np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids], dtype=np.int64)
        logits = predictor.forward(padded, mask)
        for row, seq in enumerate(ids):
            single = predictor.forward(np.array([seq]), np.ones((1, len(seq)), dtype=np.int64))
            np.testing.assert_allclose(logits[row, :len(seq)], single[0], atol=1e-3, err_msg=name)


def test_fused_files_compute_the_last_positions_logits_only_and_decode_the_same(generate_bundle):
    """Fused generator files take `logits_to_keep`; the runtime feeds 1 (run_with_ort_values) and gets the tokens
    the IO-binding path (every position's logits) gives, on a left-padded batch."""
    prompts = [r["prompt"] for r in qa_rows(3, seed=7)]
    fused = _variants(generate_bundle, optimized=True)
    assert fused
    for name in fused:
        predictor = Predictor.load(generate_bundle, model_file=name)
        assert predictor.decoder.keeps_last, name
        ids = np.array([[5, 6, 7, 8]], dtype=np.int64)
        step, _ = predictor.decoder.step(ids, np.ones_like(ids), np.arange(4)[None], None)
        full = predictor.decoder.full_logits(ids, np.ones_like(ids))
        assert full.shape[1] == 4
        np.testing.assert_allclose(step, full[:, -1], atol=1e-5)
        kept = predictor.generate(prompts, max_new_tokens=8)
        predictor.decoder.keeps_last = False
        assert predictor.generate(prompts, max_new_tokens=8) == kept, name


def test_fused_files_update_one_cache_in_place_and_decode_like_the_copying_cache(generate_bundle, monkeypatch):
    """Every fused file (fp32 and quantized) keeps the shared-cache mark; its in-place generation gives the
    tokens of the copying cache on a left-padded batch, with sampling too, and its last step wrote the last used
    column of the bound buffers (the columns after it stay empty)."""
    from deployft.runtime import generation

    prompts = [r["prompt"] for r in qa_rows(4, seed=9)]
    fused = _variants(generate_bundle, optimized=True)
    assert fused
    for name in fused:
        predictor = Predictor.load(generate_bundle, model_file=name)
        assert predictor.decoder.shares_cache, name
        caches = []
        real_init = generation.SharedCache.__init__

        def spy(self, *args, **kwargs):
            real_init(self, *args, **kwargs)
            caches.append(self)

        monkeypatch.setattr(generation.SharedCache, "__init__", spy)
        in_place = predictor.generate(prompts, max_new_tokens=12)
        sampled = predictor.generate(prompts, max_new_tokens=12, temperature=0.8, top_k=20, seed=3)
        assert len(caches) == 2 and caches[0].total > max(len(predictor.prompt_ids(p)) for p in prompts)
        keys = caches[0].buffers[0].numpy()
        assert np.abs(keys[:, :, caches[0].total - 1]).sum() > 0 and not keys[:, :, caches[0].total:].any()
        monkeypatch.undo()
        predictor.decoder.shares_cache = False
        assert predictor.generate(prompts, max_new_tokens=12) == in_place, name
        assert predictor.generate(prompts, max_new_tokens=12, temperature=0.8, top_k=20, seed=3) == sampled, name


def test_blockwise_int8_weights_are_a_separate_file_the_manifest_lists(generate_bundle):
    """ONNX Runtime maps external weights instead of parsing them into the protobuf (half the session memory)."""
    from deployft.runtime.integrity import check_for_load
    from deployft.errors import BundleError

    manifest = json.loads((generate_bundle / "deployft.json").read_text())
    assert manifest["variants"]["model_quantized.onnx"]["external_data"] == ["model_quantized.onnx_data"]
    data = generate_bundle / "model_quantized.onnx_data"
    assert data.stat().st_size > (generate_bundle / "model_quantized.onnx").stat().st_size
    assert Predictor.load(generate_bundle, model_file="model_quantized.onnx").generate("hi", max_new_tokens=2) is not None
    original = data.read_bytes()
    try:
        data.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(BundleError):
            check_for_load(generate_bundle, manifest, "model_quantized.onnx")
    finally:
        data.write_bytes(original)


def test_unfused_files_are_not_marked_for_a_shared_cache(generate_bundle):
    plain = _variants(generate_bundle, optimized=False)
    assert plain
    for name in plain:
        assert not Predictor.load(generate_bundle, model_file=name).decoder.shares_cache, name


def test_threads_share_one_predictor_on_a_shared_cache_file(generate_bundle):
    """Each generation owns its cache buffers and binding: concurrent generations on one fused file give the
    tokens they give one after another."""
    from concurrent.futures import ThreadPoolExecutor

    predictor = Predictor.load(generate_bundle, model_file="model_quantized.onnx", threads=1)
    assert predictor.decoder.shares_cache
    jobs = [(r["prompt"], seed) for r in qa_rows(3, seed=11) for seed in (1, 2)] * 2
    alone = [predictor.generate(p, max_new_tokens=10, temperature=0.8, seed=s) for p, s in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda job: predictor.generate(job[0], max_new_tokens=10, temperature=0.8,
                                                                seed=job[1]), jobs))
    assert together == alone


def _second_step_logits(decoder, ids, mask):
    from deployft.runtime.kv_cache import CopyingCache

    cache = CopyingCache(decoder, ids, mask)
    first = cache.prefill()
    return cache.advance(first.argmax(-1).astype(np.int64))


def test_files_rotating_inside_attention_run_a_left_padded_first_step_right_padded(generate_bundle):
    """Fused files rotate q and k inside GroupQueryAttention, which rotates a first step's rows by their column;
    the runtime runs such a step right-padded, so every padded row's next step is the row's own. Fed left-padded
    (the mark ignored), the padded rows' cached keys sit `pad` positions off and their next step differs."""
    prompts = [r["prompt"] for r in qa_rows(4, seed=5)]
    fused = _variants(generate_bundle, optimized=True)
    assert fused
    for name in fused:
        predictor = Predictor.load(generate_bundle, model_file=name)
        decoder = predictor.decoder
        assert decoder.rotates_in_attention, name
        ids = [predictor.prompt_ids(p) for p in prompts]
        width = max(map(len, ids))
        padded = np.array([[0] * (width - len(i)) + i for i in ids], dtype=np.int64)
        mask = np.array([[0] * (width - len(i)) + [1] * len(i) for i in ids], dtype=np.int64)
        alone = [_second_step_logits(decoder, np.array([i]), np.ones((1, len(i)), dtype=np.int64))[0] for i in ids]
        batched = _second_step_logits(decoder, padded, mask)
        logits = predictor.forward(padded, mask)
        for row, seq in enumerate(ids):
            np.testing.assert_allclose(batched[row], alone[row], atol=1e-3, err_msg=name)
            single = predictor.forward(np.array([seq]), np.ones((1, len(seq)), dtype=np.int64))
            np.testing.assert_allclose(logits[row, width - len(seq):], single[0], atol=1e-3, err_msg=name)
        decoder.rotates_in_attention = False
        drifted = _second_step_logits(decoder, padded, mask)
        padded_rows = [row for row, seq in enumerate(ids) if len(seq) < width]
        # the comparison above (atol 1e-3) tells the right step from the drifted one
        assert max(np.abs(drifted[row] - alone[row]).max() for row in padded_rows) > 1e-3, name


def test_a_single_left_padded_row_and_an_empty_first_row_keep_their_positions(generate_bundle):
    """One row with leading padding, and a batch whose first row is all padding: the op would rotate by the first
    row's first position id plus the column; the runtime's right-padded first step keeps each token at its own."""
    from deployft.runtime.kv_cache import positions_from_mask

    name = _variants(generate_bundle, optimized=True)[0]
    predictor = Predictor.load(generate_bundle, model_file=name)
    seq = predictor.prompt_ids(qa_rows(1, seed=3)[0]["prompt"])
    alone = predictor.forward(np.array([seq]), np.ones((1, len(seq)), dtype=np.int64))[0]
    ids, mask = np.array([[0, 0, 0] + seq]), np.array([[0, 0, 0] + [1] * len(seq)])
    np.testing.assert_allclose(predictor.forward(ids, mask)[0, 3:], alone, atol=1e-4)
    step, _ = predictor.decoder.step(ids, mask, positions_from_mask(mask), None)
    np.testing.assert_allclose(step[0], alone[-1], atol=1e-4)
    ids, mask = np.zeros((2, len(seq) + 2), dtype=np.int64), np.zeros((2, len(seq) + 2), dtype=np.int64)
    ids[1, 2:], mask[1, 2:] = seq, 1
    np.testing.assert_allclose(predictor.forward(ids, mask)[1, 2:], alone, atol=1e-4)
    step, _ = predictor.decoder.step(ids, mask, positions_from_mask(mask), None)
    np.testing.assert_allclose(step[1], alone[-1], atol=1e-4)


def test_a_right_padded_first_steps_cache_outlives_the_values_it_came_in(generate_bundle):
    """The server keeps `.numpy()` views of a prefill's presents after dropping the OrtValues: the cache of a
    right-padded first step must be memory those views own, not an array freed with its wrapper (which a later
    allocation overwrites)."""
    import gc

    from deployft.runtime.kv_cache import positions_from_mask

    predictor = Predictor.load(generate_bundle, model_file=_variants(generate_bundle, optimized=True)[0])
    seqs = [predictor.prompt_ids(r["prompt"]) for r in qa_rows(2, seed=4)]
    width = max(map(len, seqs)) + 1
    ids = np.array([[0] * (width - len(s)) + s for s in seqs], dtype=np.int64)
    mask = (np.arange(width) >= width - np.array([[len(s)] for s in seqs])).astype(np.int64)
    _, presents = predictor.decoder.step(ids, mask, positions_from_mask(mask), None)
    views = [value.numpy() for value in presents]
    kept = [view.copy() for view in views]
    del presents
    gc.collect()
    litter = [np.full_like(view, 7.0) for view in kept for _ in range(8)]
    assert litter and all(np.array_equal(view, copy) for view, copy in zip(views, kept))


def test_right_padding_moves_each_rows_tokens_and_back():
    from deployft.runtime.padding import left_padded, right_padded, to_left_padding

    ids = np.array([[0, 0, 5, 6], [7, 8, 9, 10], [0, 0, 0, 11]], dtype=np.int64)
    mask = (ids > 0).astype(np.int64)
    assert left_padded(mask) and left_padded(mask[:1]) and not left_padded(mask[1:2])
    assert not left_padded(np.ones((2, 3), dtype=np.int64))
    assert not left_padded(np.array([[1, 1, 0], [0, 0, 0]]))  # right-padded, one row empty
    right_ids, right_mask, lengths = right_padded(ids, mask, pad_id=0)
    assert right_ids.tolist() == [[5, 6, 0, 0], [7, 8, 9, 10], [11, 0, 0, 0]]
    assert right_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]] and lengths.tolist() == [2, 4, 1]
    values = np.arange(3 * 2 * 4).reshape(3, 2, 4)  # rows, heads, columns: each row's entries from column 0
    back = to_left_padding(values, lengths, axis=2)
    assert back[0].tolist() == [[0, 0, 0, 1], [0, 0, 4, 5]] and back[2].tolist() == [[0, 0, 0, 16], [0, 0, 0, 20]]
    assert (back[1] == values[1]).all()
    assert (to_left_padding(right_ids, lengths, axis=1) == ids).all()
