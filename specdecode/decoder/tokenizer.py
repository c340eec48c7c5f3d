"""Byte-level tokenizer: token ``i < 256`` is the byte ``i``; three specials follow.

No dependency and nothing to download: any text round-trips exactly through UTF-8, and the
vocabulary (259 ids) is small enough that a full softmax over it is cheap on a CPU.
"""

from __future__ import annotations

from collections.abc import Iterable

NUM_BYTES = 256
BOS_ID = 256  # begins every encoded prompt, so a prompt is never empty
EOS_ID = 257  # ends a response: generation stops a row when it emits this
PAD_ID = 258  # fills ragged batches; never trained on, never a valid output
VOCAB_SIZE = 259


class ByteTokenizer:
    """Encode text as UTF-8 bytes (optionally with BOS/EOS) and decode ids back to text."""

    bos_id = BOS_ID
    eos_id = EOS_ID
    pad_id = PAD_ID
    vocab_size = VOCAB_SIZE

    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ([BOS_ID] if bos else []) + ids + ([EOS_ID] if eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Bytes to text; specials and negative ids (padding in output tensors) are dropped,
        and a multi-byte character cut in half decodes to U+FFFD instead of raising."""
        data = bytes(int(i) for i in ids if 0 <= int(i) < NUM_BYTES)
        return data.decode("utf-8", errors="replace")


tokenizer = ByteTokenizer()
