"""Columns: a flag the task would ignore is refused, a missing column is named with the file's columns quoted (a
space around a name shows, and is never stripped silently), and chat-format data is refused with the way to write it."""

from __future__ import annotations

import pytest
from conftest import qa_rows, sentiment_rows, write_rows

from deployft.data.examples import load_examples
from deployft.errors import DataError, UsageError


def _message(error, *args, **kwargs) -> str:
    with pytest.raises(error) as info:
        load_examples(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_header_name_with_spaces_around_it_is_named_with_the_fix(tmp_path):
    path = tmp_path / "sp.csv"
    path.write_text("text, label\n" + "".join(f"film {i}, {'ab'[i % 2]}\n" for i in range(12)), encoding="utf-8")
    message = _message(DataError, "classify", path)
    assert f"column 'label' not found in {path}, but ' label' is: the header puts spaces around the name" in message
    assert "(columns: 'text', ' label'); remove them from the header, or pass --label-column ' label'" in message
    examples = load_examples("classify", path, columns={"label": " label"})  # the name as written: no renaming
    assert examples.columns == {"text": "text", "label": " label"} and examples.labels == ["a", "b"]


def test_a_flag_with_spaces_around_a_column_name_is_named(tmp_path):
    path = write_rows(tmp_path / "d.csv", sentiment_rows(12))
    message = _message(DataError, "classify", path, columns={"text": "text "})
    assert "column 'text ' not found" in message and "remove them from --text-column, or pass --text-column 'text'" \
        in message


@pytest.mark.parametrize("columns", [None, {"text": "messages"}, {"prompt": "messages", "response": "messages"}])
def test_chat_data_is_refused_with_the_way_to_write_it(tmp_path, columns):
    rows = [{"messages": [{"role": "user", "content": p["prompt"]}, {"role": "assistant", "content": p["response"]}]}
            for p in qa_rows(20)]
    path = write_rows(tmp_path / "chat.jsonl", rows)
    message = _message(DataError, "generate", path, columns=columns)
    assert f"column 'messages' of {path} holds chat messages" in message
    assert "training does not read chat-format data" in message
    assert "the user's message in 'prompt' and the assistant's reply in 'response'" in message
    assert "chat template" in message


@pytest.mark.parametrize("task, columns, fragment", [
    ("generate", {"label": "stars"}, "--label-column applies to --task classify only; --task generate reads "
                                     "--prompt-column with --response-column, or --text-column alone"),
    ("classify", {"prompt": "q"}, "--prompt-column applies to --task generate only; --task classify reads "
                                  "--text-column with --label-column"),
    ("generate", {"text": "body", "response": "response"},
     "--text-column and --response-column cannot be used together: --task generate reads --prompt-column with "
     "--response-column, or --text-column alone; pass the flags of one"),
])
def test_a_column_flag_the_task_would_ignore_is_refused(tmp_path, task, columns, fragment):
    rows = [{**pair, "body": f"text {i}", "stars": i % 2} for i, pair in enumerate(qa_rows(20))]
    assert fragment in _message(UsageError, task, write_rows(tmp_path / "both.jsonl", rows), columns=columns)
