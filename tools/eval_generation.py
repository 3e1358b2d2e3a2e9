"""Generation quality on held-out scenes: depth, segmentation and captions from RGB (issue 7, part 4).

    python tools/build_scenes.py --data_dir data                      # the scenes dataset (once)
    python tools/eval_generation.py --checkpoint runs/demo/MODALITIES/checkpoints \\
        --data_dir data --text_tokenizer ../shared/vocab/text_tokenizer_4m_wordpiece_30k.json \\
        --num_scenes 200 --out runs/demo/generation_quality

Reads the first --num_scenes examples of the scenes validation split (`scenes/64px` under
--data_dir, or --dataset DIR), generates tok_depth@64, tok_semseg@64 and caption from the rgb@64
pixels (MaskGIT, --steps, --temperature; captions autoregressive), decodes them through the
tokenizers (default: the shipped tokenizers/scenes_64 ones; --tokenizer NAME=DIR overrides) and
writes OUT/quality.json and OUT/quality.md (table: generated vs the tokenizers' reconstruction).
"""

import argparse
import json
import pathlib
import sys

from fourm_jax.data import records, scenes_dataset
from fourm_jax.data.errors import DataError
from fourm_jax.generate import GenerationSampler, evaluate, outputs
from fourm_jax.text.tokenizer import load_tokenizer as load_text_tokenizer
from fourm_jax.tokenizers.artifacts import load_tokenizer as load_image_tokenizer
from fourm_jax.train import checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="checkpoint of a model trained on scenes")
    parser.add_argument("--data_dir", default="data", help="holds scenes/64px (tools/build_scenes.py)")
    parser.add_argument("--dataset", help="the dataset directory itself (overrides --data_dir)")
    parser.add_argument("--split", default="validation")
    parser.add_argument("--num_scenes", type=int, default=200)
    parser.add_argument("--tokenizer", action="append", default=[],
                        help="NAME=DIR for tok_depth@64 / tok_semseg@64 (default: the shipped ones)")
    parser.add_argument("--text_tokenizer", help="text vocabulary; without it captions are not evaluated")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8, help="MaskGIT steps of depth and segmentation")
    parser.add_argument("--temperature", type=float, default=0.01)
    parser.add_argument("--caption_tokens", type=int, default=48)
    parser.add_argument("--caption_temperature", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    tokenizer_dirs = dict.fromkeys(evaluate.DENSE_TARGETS.values())
    for value in args.tokenizer:
        name, sep, path = value.partition("=")
        if not sep or name not in tokenizer_dirs:
            raise SystemExit(f"--tokenizer {value!r}: expected NAME=DIR, NAME one of {list(tokenizer_dirs)}")
        tokenizer_dirs[name] = path
    dataset = args.dataset or scenes_dataset.dataset_dir(args.data_dir)
    try:
        split = records.open_dataset(dataset, args.split)
        config = checkpoint.load_config(args.checkpoint)
        tokenizers = {name: load_image_tokenizer(path or name) for name, path in tokenizer_dirs.items()
                      if name in config.domains_out}
    except (FileNotFoundError, DataError) as e:
        raise SystemExit(f"error: {e}") from None
    if "rgb@64" not in config.domains_in:
        raise SystemExit(f"{args.checkpoint}: the model does not take rgb@64; "
                         f"inputs: {list(config.domains_in)}")
    count = min(args.num_scenes, len(split))
    text_tokenizer = load_text_tokenizer(args.text_tokenizer) if args.text_tokenizer else None
    sampler = GenerationSampler(checkpoint.load_model(args.checkpoint), shape_buckets=1)
    report = evaluate.evaluate_scenes(
        sampler, [split[i] for i in range(count)], tokenizers, text_tokenizer, batch_size=args.batch_size,
        steps=args.steps, temperature=args.temperature, caption_tokens=args.caption_tokens,
        caption_temperature=args.caption_temperature, seed=args.seed)
    report |= dict(checkpoint=str(args.checkpoint), dataset=str(dataset), split=args.split)
    out = pathlib.Path(args.out)
    outputs.write_text(out / "quality.json", json.dumps(report, indent=1) + "\n")
    outputs.write_text(out / "quality.md", evaluate.markdown_table(report))
    print(evaluate.markdown_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
