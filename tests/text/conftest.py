"""Text vocabularies for the tests: ml-4m's WordPiece file from ../shared, and a small SentencePiece
vocabulary trained once per session."""

import pytest

from fourm_jax.text.tokenizer import load_tokenizer, train_sentencepiece

CORPUS_WORDS = ("a an the man woman child dog cat horse red blue green small large shiny matte sphere "
                "cube cylinder on left right of behind in front next to under above sitting standing "
                "road field sky grass table chair").split()


@pytest.fixture(scope="session")
def wordpiece_path(shared_dir):
    return shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json"


@pytest.fixture(scope="session")
def wordpiece(wordpiece_path):
    return load_tokenizer(wordpiece_path)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    import numpy as np

    rng = np.random.default_rng(0)
    lines = [" ".join(rng.choice(CORPUS_WORDS, size=rng.integers(3, 12))) for _ in range(3000)]
    path = tmp_path_factory.mktemp("corpus") / "captions.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def sentencepiece(corpus_file, tmp_path_factory):
    return train_sentencepiece([corpus_file], tmp_path_factory.mktemp("sp") / "vocab.model", vocab_size=4500)
