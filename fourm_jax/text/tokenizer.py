"""Text tokenizers with 4M's fixed token layout, behind one interface, two backends.

- WordPiece: ml-4m's own vocabulary (`text_tokenizer_4m_wordpiece_30k.json`, the one the released
  checkpoints use), read with the Hugging Face `tokenizers` package (the optional `wordpiece`
  extra); ids are bit-identical to ml-4m's.
- SentencePiece: a vocabulary trained with tools/train_text_tokenizer.py. Its layout matches ids
  0..4283 (PAD, UNK, SOS, EOS, sentinels, value tokens, class names) and adds the format keywords
  as single tokens; these fixed tokens are control symbols, never produced from raw text.

    tokenizer = load_tokenizer("path/to/text_tokenizer_4m_wordpiece_30k.json")
    ids = tokenizer.encode("a dog on a couch")          # int32 [5], no EOS (masking appends it)
    batch = tokenizer.encode_batch(["a dog", "a cat"])  # list of int32 arrays

Loading checks the fixed layout and names the file and the first token out of place.
"""

from __future__ import annotations

import abc
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np

from fourm_jax.text import layout

# Words the structured formats use as markers; each must be one token of the vocabulary.
FORMAT_KEYWORDS = ("human", "pose", "global", "shape", "camera", "point", "polygon", "none")


class TextTokenizer(abc.ABC):
    """Text <-> token ids. encode adds no SOS/EOS; decode renders special tokens by name."""

    def __init__(self, path: str | pathlib.Path, cache_size: int = 0):
        self.path = pathlib.Path(path)
        self._cache: dict[str, np.ndarray] = {}
        self._cache_size = cache_size

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id in [0, vocab_size) has a token."""

    @abc.abstractmethod
    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        ...

    @abc.abstractmethod
    def _decode_run(self, ids: list[int]) -> str:
        """Decodes a run of ids that `_decodes` accepts."""

    @abc.abstractmethod
    def _decodes(self, token_id: int) -> bool:
        """Whether the backend's own decoder renders this id (else decode spells its token)."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str | None:
        """The token with this id, or None outside the vocabulary."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of `token` as a whole vocabulary entry, or None."""

    def encode(self, text: str) -> np.ndarray:
        """int32 token ids of `text` (no SOS/EOS). Texts seen recently come from a cache of
        `cache_size` entries (pipelines repeat each caption several times)."""
        if not isinstance(text, str):
            raise TypeError(f"{self.path.name}: expected text (str), got {type(text).__name__}")
        cached = self._cache.get(text)
        if cached is not None:
            return cached
        ids = np.array(self._encode_batch([text])[0], np.int32)
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            ids.flags.writeable = False
            self._cache[text] = ids
        return ids

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """int32 token ids of each text, in one call to the backend."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"{self.path.name}: texts[{i}]: expected str, got {type(text).__name__}")
        return [np.array(ids, np.int32) for ids in self._encode_batch(list(texts))]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, with fixed-layout tokens (PAD, EOS, sentinels, value tokens, class names)
        spelled as tokens (`[EOS]`, `v0=12`, `dog`) and ids outside the vocabulary as `<id?>`.
        Never raises on bad ids."""
        words, run = [], []
        for token_id in ids:
            token_id = int(token_id)
            if self._decodes(token_id):
                run.append(token_id)
                continue
            if run:
                words.append(self._decode_run(run))
                run = []
            words.append(self.id_to_token(token_id) or f"<{token_id}?>")
        if run:
            words.append(self._decode_run(run))
        return " ".join(word for word in words if word)

    def check_layout(self, keywords: Sequence[str] = FORMAT_KEYWORDS) -> None:
        """Raises ValueError unless ids 0..4283 hold 4M's fixed tokens and each keyword is a token."""
        for expected_id, token in enumerate(layout.special_tokens()):
            found = self.token_to_id(token)
            if found != expected_id:
                raise ValueError(f"{self.path}: token {token!r} has id {found}, 4M's layout needs "
                                 f"{expected_id}; this vocabulary was not built for 4M")
        missing = [word for word in keywords if self.token_to_id(word) is None]
        if missing:
            raise ValueError(f"{self.path}: the format keywords {missing} are not single tokens of this "
                             "vocabulary")


class WordPieceTokenizer(TextTokenizer):
    """ml-4m's WordPiece vocabulary (Hugging Face `tokenizers` JSON)."""

    def __init__(self, path, cache_size: int = 0):
        super().__init__(path, cache_size)
        try:
            import tokenizers
        except ImportError as error:
            raise ImportError("reading a WordPiece vocabulary needs the `tokenizers` package: "
                              "pip install 'fourm_jax[wordpiece]'") from error
        if not self.path.is_file():
            raise FileNotFoundError(f"WordPiece vocabulary {self.path} does not exist")
        try:
            self._tokenizer = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as error:  # the Rust side raises its own exception type
            raise ValueError(f"{self.path}: not a readable `tokenizers` JSON file: {error}") from error
        self._vocab_size = self._tokenizer.get_vocab_size()
        self.check_layout()

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _encode_batch(self, texts):
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _decodes(self, token_id):
        return 0 <= token_id < self._vocab_size  # the WordPiece decoder spells special tokens itself

    def _decode_run(self, ids):
        return self._tokenizer.decode(ids, skip_special_tokens=False)

    def id_to_token(self, token_id):
        return self._tokenizer.id_to_token(token_id) if 0 <= token_id < self._vocab_size else None

    def token_to_id(self, token):
        return self._tokenizer.token_to_id(token)


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model trained with tools/train_text_tokenizer.py."""

    def __init__(self, path, cache_size: int = 0):
        super().__init__(path, cache_size)
        import sentencepiece

        if not self.path.is_file():
            raise FileNotFoundError(f"SentencePiece model {self.path} does not exist")
        try:
            self._processor = sentencepiece.SentencePieceProcessor(model_file=str(self.path))
        except (OSError, RuntimeError) as error:
            raise ValueError(f"{self.path}: not a readable SentencePiece model: {error}") from error
        self._vocab_size = self._processor.get_piece_size()
        self.check_layout()

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _encode_batch(self, texts):
        return self._processor.encode(texts)

    def _decodes(self, token_id):
        # Control symbols (the fixed layout and the keywords) decode to nothing in SentencePiece.
        return 0 <= token_id < self._vocab_size and not self._processor.is_control(token_id)

    def _decode_run(self, ids):
        return self._processor.decode(ids)

    def id_to_token(self, token_id):
        return self._processor.id_to_piece(token_id) if 0 <= token_id < self._vocab_size else None

    def token_to_id(self, token):
        token_id = self._processor.piece_to_id(token)
        return token_id if self._processor.id_to_piece(token_id) == token else None


def load_tokenizer(path: str | pathlib.Path, cache_size: int = 0) -> TextTokenizer:
    """A WordPiece (`.json`) or SentencePiece (`.model`) vocabulary with 4M's layout."""
    suffix = pathlib.Path(path).suffix
    if suffix == ".json":
        return WordPieceTokenizer(path, cache_size)
    if suffix == ".model":
        return SentencePieceTokenizer(path, cache_size)
    raise ValueError(f"{path}: unknown vocabulary type {suffix!r}; expected a WordPiece .json or a "
                     "SentencePiece .model")


def reserved_tokens() -> list[str]:
    """The tokens a SentencePiece vocabulary reserves after PAD, UNK, SOS, EOS (ids 4..): 4M's
    sentinels, value tokens and class names, then the format keywords."""
    return layout.special_tokens()[len(layout.SPECIAL_TOKENS):] + list(FORMAT_KEYWORDS)


def train_sentencepiece(corpus: Sequence[str | pathlib.Path], output: str | pathlib.Path, vocab_size: int,
                        model_type: str = "unigram", lowercase: bool = True,
                        character_coverage: float = 0.9995, num_threads: int = 2) -> SentencePieceTokenizer:
    """Trains a SentencePiece vocabulary of `vocab_size` ids (4M's reserved tokens included) on
    text files with one sentence per line; writes `output` (.model) atomically and returns it.

    The reserved tokens are control symbols: fixed ids, never produced from raw text (the formats
    emit them directly). With a small corpus the vocabulary may come out smaller than asked.
    """
    import os
    import tempfile

    import sentencepiece

    output = pathlib.Path(output)
    if output.suffix != ".model":
        raise ValueError(f"output {output}: a SentencePiece model file must end in .model")
    files = [pathlib.Path(path) for path in corpus]
    for path in files:
        if not path.is_file() or path.stat().st_size == 0:
            raise ValueError(f"corpus file {path} does not exist or is empty")
    reserved = reserved_tokens()
    minimum = len(layout.SPECIAL_TOKENS) + len(reserved) + 1
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} leaves no room for learned pieces: 4M reserves "
                         f"{minimum - 1} ids")
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.stem}-") as tmp:
        prefix = pathlib.Path(tmp) / output.stem
        try:
            sentencepiece.SentencePieceTrainer.train(
                input=[str(path) for path in files], model_prefix=str(prefix), vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage,
                normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
                pad_id=layout.PAD_ID, unk_id=layout.UNK_ID, bos_id=layout.SOS_ID, eos_id=layout.EOS_ID,
                pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[SOS]", eos_piece="[EOS]",
                control_symbols=reserved, hard_vocab_limit=False, num_threads=num_threads,
                minloglevel=2)
        except RuntimeError as error:
            names = [str(path) for path in files]
            raise ValueError(f"SentencePiece training on {names} failed: {error}") from error
        SentencePieceTokenizer(prefix.with_suffix(".model"))  # checks the layout before publishing
        os.replace(prefix.with_suffix(".model"), output)
    return SentencePieceTokenizer(output)
