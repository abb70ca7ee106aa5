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
    # values a config file can hold that are not what the option takes: refused, never crashed on or rounded
    ("variants", 5, "--variants expects comma-separated variant names, got 5"),
    ("batch_sizes", 1.5, "--batch-sizes expects comma-separated positive integers, got 1.5"),
    ("batch_sizes", [1.7, 8], "--batch-sizes expects comma-separated positive integers, got [1.7, 8]"),
    ("batch_sizes", [True, 8], "--batch-sizes expects"),
    ("seq_lens", None, "--seq-lens expects comma-separated positive integers, got None"),
    ("peer_cache", 5, "--peer-cache expects a folder path, got 5"),
    ("settle", float("nan"), "--settle must be a finite number of seconds >= 0, got nan"),
    ("settle", True, "--settle must be"),
    ("min_time", float("nan"), "--min-time must be a finite number"),
    ("min_time", float("inf"), "--min-time must be a finite number of seconds >= 0, got inf"),
    ("peak", "yes", "--peak must be true or false, got 'yes'"),
])
def test_bad_values_name_their_flag(flag, value, words):
    with pytest.raises(UsageError) as info:
        make(**{flag: value})
    assert words in str(info.value)
    assert "\n" not in str(info.value)


def test_a_file_given_as_peer_cache_is_refused_naming_the_flag(tmp_path):
    (tmp_path / "cache").write_text("not a folder")
    for given in (tmp_path / "cache", tmp_path / "cache" / "inside"):
        with pytest.raises(UsageError, match="--peer-cache .*cache is a file, not a folder"):
            make(peer_cache=given)
    assert make(peer_cache=tmp_path / "new" / "cache").peer_cache == tmp_path / "new" / "cache"


def test_integer_strings_and_numpy_integers_still_count():
    import numpy as np

    config = make(batch_sizes=["2", np.int64(4)], seq_lens=(8,), settle=0, min_time=1)
    assert config.batch_sizes == (2, 4) and config.seq_lens == (8,)
    assert config.settle == 0.0 and config.min_time == 1.0


def test_settings_the_runs_task_never_uses_are_refused_naming_them():
    with pytest.raises(UsageError, match=r"^--batch-sizes, --seq-lens, --hot-calls: not used by a generate RUN \(its "
                                         r"timings take --prompt-lens, --new-tokens\); leave them out$"):
        make(hot_calls=9, batch_sizes="7", seq_lens=5).check_task("generate")
    with pytest.raises(UsageError, match=r"^--prompt-lens, --new-tokens: not used by a classify RUN"):
        make(prompt_lens=3, new_tokens=99).check_task("classify")
    with pytest.raises(UsageError, match=r"^--hot-calls: not used by a generate RUN"):
        make(hot_calls=0).check_task("generate")
    make(hot_calls=0, batch_sizes=2).check_task("classify")
    make(prompt_lens=3, new_tokens=99).check_task("generate")
    make().check_task("generate")  # every default, the other task's included, is left alone
