"""Completing prompts: their token ids, cut to the prompt limit with one warning per call, and the decoding loop that
turns a batch's tokens into texts with a `TextTracker` per row (`Predictor.generate` and `Predictor.stream`)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from ..prompts import PromptFormat, prompt_ids, prompt_limit
from .detokenize import TextTracker
from .generation import KVDecoder
from .sampling import GenerationOptions
from .text import TextCodec

logger = logging.getLogger("deployft.runtime")


def prompt_rows(prompts: list, fmt: PromptFormat, codec: TextCodec, max_length: int | None,
                start_id: int) -> list[list[int]]:
    """Token ids of each prompt (a string or a chat) as `deployft.prompts` formats them, cut to their last
    `prompt_limit(max_length)` tokens as training cut prompts, with one warning for all the prompts cut; an empty
    prompt starts from `start_id` (the begin-of-text token, as an unconditional model would)."""
    rows = [prompt_ids(p, fmt, codec, None) for p in prompts]
    limit = prompt_limit(max_length)
    cut = sum(len(row) > limit for row in rows) if limit else 0
    if cut:
        logger.warning("%d of %d prompt(s) longer than %d tokens were cut to their last %d tokens (half of the "
                       "bundle's max_length %d, as training cut them)", cut, len(rows), limit, limit, max_length)
        rows = [row[-limit:] for row in rows]
    return [row or [int(start_id)] for row in rows]


def complete(decoder: KVDecoder, codec: TextCodec, rows: list[list[int]], options: GenerationOptions) -> list[str]:
    """The text each row of prompt ids generates, as one left-padded batch; a row's text ends before the first stop
    string or end token."""
    ids, mask = codec.pad(rows, side="left")
    trackers = [TextTracker(codec.decode, options.stop, decoder.eos_set) for _ in rows]
    done = np.zeros(len(rows), dtype=bool)
    for tokens in decoder.iter_batch(ids, mask, options, done):
        for i in np.flatnonzero(~done):  # a finished row (end token, stop string, budget) gets padding
            trackers[i].add(int(tokens[i]))
            done[i] |= trackers[i].finished
    for tracker in trackers:  # ids still waiting for a character's next byte
        tracker.flush()
    return [t.text for t in trackers]


def stream_pieces(decoder: KVDecoder, codec: TextCodec, row: list[int], options: GenerationOptions) -> Iterator[str]:
    """The text one row of prompt ids generates, in pieces as they are decoded (see `TextTracker`)."""
    ids, mask = codec.pad([row], side="left")
    tracker = TextTracker(codec.decode, options.stop, decoder.eos_set)
    done = np.zeros(1, dtype=bool)
    for tokens in decoder.iter_batch(ids, mask, options, done):
        piece = tracker.add(int(tokens[0]))
        done[0] |= tracker.finished
        if piece:
            yield piece
    tail = tracker.flush()
    if tail:
        yield tail
