"""Trains a SentencePiece text vocabulary with 4M's token layout from a text corpus.

    python tools/train_text_tokenizer.py --corpus captions.txt --output vocab.model --vocab-size 8000

Ids 0..4283 are 4M's fixed tokens (PAD, UNK, SOS, EOS, [S_0]..[S_199], v0=0..v3=999, the 80 COCO
class names), 4284..4291 the format keywords, then the learned pieces. Prints a JSON summary.
"""

import argparse
import json
import os
import sys

from fourm_jax.text import layout
from fourm_jax.text.tokenizer import reserved_tokens, train_sentencepiece


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", action="append", required=True,
                        help="text file, one sentence per line (repeatable)")
    parser.add_argument("--output", required=True, help="the .model file to write")
    parser.add_argument("--vocab-size", type=int, default=16000, help="ids in all, reserved ones included")
    parser.add_argument("--model-type", default="unigram", choices=["unigram", "bpe", "char", "word"])
    parser.add_argument("--no-lowercase", dest="lowercase", action="store_false",
                        help="keep case (ml-4m's WordPiece vocabulary lowercases)")
    parser.add_argument("--character-coverage", type=float, default=0.9995)
    args = parser.parse_args(argv)
    tokenizer = train_sentencepiece(args.corpus, args.output, args.vocab_size, args.model_type,
                                    args.lowercase, args.character_coverage, num_threads=os.cpu_count() or 1)
    reserved = len(layout.SPECIAL_TOKENS) + len(reserved_tokens())
    print(json.dumps(dict(output=str(tokenizer.path), vocab_size=tokenizer.vocab_size, reserved=reserved,
                          learned=tokenizer.vocab_size - reserved), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
