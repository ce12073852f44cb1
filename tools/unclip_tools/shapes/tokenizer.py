"""The real CLIP BPE tokenizer as a `tokenizer.json`, built offline, tokenising exactly as Karlo does.

The vocabulary file `bpe_simple_vocab_16e6.txt.gz` is OpenAI's, shipped inside the PyPI wheel
`open-clip-torch` (vendored here as `clip_bpe_vocab_16e6.txt.gz`). The layout follows Hugging
Face's CLIP converter: 49408 tokens, start-of-text 49406, end-of-text 49407. Like Karlo's
tokenizer (CLIPTokenizer loaded with `pad_token="!"`) it pads with "!" = id 0 to 77 tokens and
truncates at 77 keeping the end-of-text token; both rules are stored in the JSON itself, so any
`tokenizers` implementation (Python or Rust) reproduces the ids.

The shapes text encoder uses only the few hundred ids its captions produce: `compact_vocabulary`
maps each CLIP id to a small embedding row (unknown ids share one row), and that table lives
inside the exported graph, so the graph still takes real CLIP ids.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

VOCAB_FILE = Path(__file__).with_name("clip_bpe_vocab_16e6.txt.gz")
CONTEXT_LENGTH = 77
BOS_ID, EOS_ID, PAD_ID = 49406, 49407, 0
CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_tokenizer(vocab_file: Path = VOCAB_FILE) -> Tokenizer:
    """The CLIP ViT-L/14 tokenizer with Karlo's padding and truncation rules."""
    lines = gzip.open(vocab_file).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == 49408 and vocab["<|endoftext|>"] == EOS_ID and vocab["!"] == PAD_ID

    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<|endoftext|>", end_of_word_suffix="</w>", continuing_subword_prefix="", fuse_unk=False)
    )
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.post_processor = processors.RobertaProcessing(
        sep=("<|endoftext|>", EOS_ID), cls_token=("<|startoftext|>", BOS_ID), add_prefix_space=False, trim_offsets=False
    )
    tok.decoder = decoders.ByteLevel()
    tok.enable_truncation(max_length=CONTEXT_LENGTH)
    tok.enable_padding(length=CONTEXT_LENGTH, pad_id=PAD_ID, pad_token="!")
    return tok


@lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    return build_tokenizer()


def encode(texts: list[str], tok: Tokenizer | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [B,77], mask bool [B,77]) exactly as the serving path computes them."""
    tok = tok or default_tokenizer()
    encs = tok.encode_batch(texts)
    ids = np.array([e.ids for e in encs], dtype=np.int64)
    mask = np.array([e.attention_mask for e in encs], dtype=bool)
    return ids, mask


def compact_vocabulary(words: list[str], tok: Tokenizer | None = None) -> np.ndarray:
    """int64 [49408] table: CLIP id -> row of the compact embedding.

    Row 0 is the pad "!" (id 0), row 1 every id not produced by `words`, row 2 start-of-text,
    row 3 end-of-text, then the ids of `words` in order of first appearance.
    """
    tok = tok or default_tokenizer()
    table = np.ones(49408, dtype=np.int64)
    table[PAD_ID], table[BOS_ID], table[EOS_ID] = 0, 2, 3
    nxt = 4
    for w in words:
        for i in tok.encode(w, add_special_tokens=False).ids:
            if table[i] == 1 and i not in (PAD_ID, BOS_ID, EOS_ID):
                table[i] = nxt
                nxt += 1
    return table
