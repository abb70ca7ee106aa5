"""Incremental detokenization of one generated row, with stop strings (`TextTracker`).

`KVDecoder.iter_batch` (`generation.py`) yields token ids; a tracker per row turns them into the text pieces that
`Predictor.stream` yields and the server sends, and ends the row at an end token or a stop string.
"""

from __future__ import annotations

import os

CONTEXT_PIECES = 3
"""Pieces decoded before the new ids as their context. Each piece holds a character at least, so a decoder's clean-up
of up to 4 characters (transformers' `clean_up_tokenization`: " n't", " 're") sees every match whole where it ends,
and the context sees the rewrite (`TextCodec.decode`)."""


class TextTracker:
    """Turns one row's new token ids into text pieces, holding back what could still be a stop string.

    Detokenization is incremental: each token decodes only the ids since the previous piece, after the ids of the
    last `CONTEXT_PIECES` pieces as context (so a decoder that strips a leading space, joins sub-words or cleans up
    the space before punctuation sees its neighbours), and a long generation costs the same per token at its end as
    at its start instead of decoding every id again. Where the decoder rewrites the context once more ids follow (a
    clean-up of the space before punctuation), the text resumes from where it agrees with a whole decode (a
    character already shown stays shown). Stop strings are searched only where a new match can be: the new text and
    the stop string's length before it.
    """

    def __init__(self, decode, stop: tuple[str, ...], eos_ids: set[int]):
        self.decode = decode
        self.stop = stop
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.emitted = 0
        self.text = ""
        self.finished = False
        self._starts = [0]
        """Where the last `CONTEXT_PIECES` pieces start in `ids`: the context of the next piece starts at the
        first."""
        self._read = 0
        """Ids before this index are in `text`."""
        self._longest_stop = max((len(s) for s in stop), default=0)

    def add(self, token: int) -> str:
        """Record a token; return the text that is now safe to show (maybe empty)."""
        if self.finished:
            return ""
        if token in self.eos_ids:
            tail = self.flush()
            self.finished = True
            return tail
        self.ids.append(int(token))
        piece = self._new_text()
        if piece is None:  # an incomplete multi-byte character (or nothing yet): wait for the next token
            return ""
        if self._extend(piece):
            return self.flush()
        return self._take(len(self.text) - self._stop_prefix())

    def flush(self) -> str:
        """Return everything not yet emitted (with any incomplete character's replacement mark)."""
        if self._read < len(self.ids) and not self.finished:
            piece = self._new_text(partial=True)
            if piece:
                self._extend(piece)
        return self._take(len(self.text))

    def _new_text(self, partial: bool = False) -> str | None:
        """The text the ids since `_read` add; None (unless `partial`) while that is nothing, or ends in an
        incomplete character and completes no stop string."""
        start = self._starts[0]
        context = self.decode(self.ids[start:self._read]) if self._read > start else ""
        window = self.decode(self.ids[start:])
        if window.startswith(context):
            new = window[len(context):]
        else:  # the decoder rewrote the context: resume from where the text and a whole decode agree
            whole = self.decode(self.ids)
            common = len(os.path.commonprefix([self.text, whole]))
            self.text, self.emitted = self.text[:common], min(self.emitted, common)
            new = whole[common:]
        if not partial and (not new or new.endswith("\ufffd") and not self._completes_stop(new.rstrip("\ufffd"))):
            return None
        self._starts, self._read = (self._starts + [self._read])[-CONTEXT_PIECES:], len(self.ids)
        return new

    def _completes_stop(self, new: str) -> bool:
        tail = self.text[max(0, len(self.text) - self._longest_stop + 1):] + new
        return any(stop in tail for stop in self.stop)

    def _extend(self, piece: str) -> bool:
        """Append `piece` to the text; cut the text at a stop string that now appears (True) or not (False)."""
        start = max(0, len(self.text) - self._longest_stop + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stop) if i >= 0]
        if hits:
            self.text, self.finished = self.text[:min(hits)], True
        return bool(hits)

    def _take(self, end: int) -> str:
        piece = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece

    def _stop_prefix(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        longest = 0
        for stop in self.stop:
            for n in range(min(len(stop) - 1, len(self.text)), longest, -1):
                if self.text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
