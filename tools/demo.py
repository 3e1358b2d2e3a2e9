"""The demo: the main job on built-in data (`make demo`).

For now it validates the tiny model config and prints the modality registry; the training issue
turns it into dataset -> tokenizers -> training -> samples.
"""

import argparse
import json

from fourm_jax import modalities
from fourm_jax.model.config import variant_config


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--variant", default="fm_test_tiny_gelu")
    args = parser.parse_args()
    config = variant_config(args.variant)
    print(json.dumps(dict(variant=args.variant, dim=config.dim, depth=config.encoder_depth,
                          domains_in=config.domains_in, domains_out=config.domains_out)))
    for m in modalities.all_modalities():
        print(f"{m.name:24s} {m.kind.value:20s} id={m.id:5d} tokens={m.max_tokens} vocab={m.vocab_size}")


if __name__ == "__main__":
    main()
