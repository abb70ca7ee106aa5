import pytest

from deployft.bench import BenchConfig
from deployft.errors import UsageError


def make(**kw):
    return BenchConfig(run="r", bundle="b", report="out", **kw)


def test_defaults_follow_the_issue():
    config = make()
    assert config.batch_sizes == (1, 8, 32) and config.seq_lens == (16, 64, 128)
    assert config.variants is None and config.threads >= 1 and config.device == "cpu"


def test_comma_separated_strings_are_parsed_and_deduplicated():
    config = make(batch_sizes="1, 8,8", seq_lens="16", variants="pytorch, model.onnx", new_tokens=4)
    assert config.batch_sizes == (1, 8) and config.seq_lens == (16,)
    assert config.variants == ("pytorch", "model.onnx") and config.new_tokens == (4,)


@pytest.mark.parametrize("flag, value, words", [
    ("batch_sizes", "", "--batch-sizes is empty"),
    ("seq_lens", [], "--seq-lens is empty"),
    ("prompt_lens", "a,b", "--prompt-lens expects"),
    ("batch_sizes", "0,8", "--batch-sizes values must be positive"),
    ("variants", " , ", "--variants is empty"),
    ("threads", 0, "--threads must be an integer >= 1"),
    ("repeats", 0, "--repeats"),
    ("min_time", -1, "--min-time"),
    ("device", "tpu", "--device must be one of cpu, cuda"),
])
def test_bad_values_name_their_flag(flag, value, words):
    with pytest.raises(UsageError) as info:
        make(**{flag: value})
    assert words in str(info.value)
    assert "\n" not in str(info.value)
