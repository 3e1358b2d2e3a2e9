"""Any-to-any generation from the command line: conditions in, decoded outputs and a grid out.

    python tools/generate.py --checkpoint runs/demo/checkpoints \\
        --condition rgb@224=photo.png --condition caption="a red cube" \\
        --target tok_depth@224 --target caption \\
        --tokenizer tok_depth@224=tokenizers/depth --text_tokenizer text_tokenizer_4m_wordpiece_30k.json \\
        --out runs/generated

    python tools/generate.py --checkpoint runs/demo/MODALITIES/checkpoints --condition rgb@64=scene.png \\
        --target tok_depth@64 --target tok_semseg@64 --tokenizer tok_depth@64 --tokenizer tok_semseg@64 \\
        --out runs/generated   # bare names: the shipped tokenizers/scenes_64 tokenizers

    python tools/generate.py --checkpoint DIR --recipe configs/generate/rgb_to_all.py \\
        --condition rgb@224=photo.png --set top_p=0.9 --out runs/generated

Conditions: NAME=FILE for images (pixel inputs such as rgb@224 at their exact size; image tokens
through NAME's tokenizer, or a .npy of tokens), NAME=TEXT for sequences. Targets come from
--target (MaskGIT in --steps cosine steps for images, autoregressive for sequences) or from the
recipe (configs/generate/*.py: conditions, targets, tokenizers, sampling settings; --set a=b
overrides a field). Writes OUT/<sample>/<domain>.png|.txt (det: boxes drawn on the image), the
tokens (OUT/tokens.npz) and OUT/grid.png with every sample as a row.
"""

import argparse
import json
import pathlib
import sys

import numpy as np

from fourm_jax import configs, modalities
from fourm_jax.generate import GenerationSampler, outputs
from fourm_jax.generate.recipe import Target, build_inputs, generate, shown_domains
from fourm_jax.modalities import Kind
from fourm_jax.text.tokenizer import load_tokenizer as load_text_tokenizer
from fourm_jax.tokenizers.artifacts import load_tokenizer as load_image_tokenizer
from fourm_jax.train import checkpoint


def _pairs(values, flag: str, bare_ok: bool = False) -> dict[str, str]:
    """NAME=VALUE arguments as a dict; with bare_ok a bare NAME stands for NAME=NAME."""
    out = {}
    for value in values or []:
        name, sep, rest = value.partition("=")
        if not name or not (sep or bare_ok):
            raise SystemExit(f"{flag} {value!r}: expected NAME=VALUE")
        out[name] = rest if sep else name
    return out


def _recipe(args) -> dict:
    """The recipe's fields (or the defaults), with --set overrides applied."""
    if args.recipe:
        config = configs.load(args.recipe, args.set or []).to_dict()
    elif args.set:
        raise SystemExit("--set needs --recipe")
    else:
        config = {}
    known = {"conditions", "targets", "tokenizers", "text_tokenizer", "cfg_grow_conditioning", "top_k",
             "top_p", "seed", "num_samples"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise SystemExit(f"{args.recipe}: unknown field(s) {unknown}; known: {sorted(known)}")
    return config


def _row(decoded: dict, domains: list[str], i: int, tile: int):
    """(title, image) tiles of sample i: conditions first, then targets."""
    tiles = []
    rgb = next((decoded[d][i] for d in domains if d in decoded and d.startswith(("tok_rgb", "rgb"))
                and isinstance(decoded[d][i], np.ndarray)), None)
    for domain in domains:
        value = decoded[domain][i]
        if isinstance(value, np.ndarray):
            tiles.append((domain, value))
        elif domain == "det":
            canvas = rgb if rgb is not None else np.full((tile, tile, 3), 255, np.uint8)
            tiles.append((domain, outputs.draw_boxes(canvas, value)))
        else:
            tiles.append((domain, outputs.text_image(str(value), tile)))
    return tiles


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="fourm_jax checkpoint directory (Orbax)")
    parser.add_argument("--recipe", help="configs/generate/<name>.py")
    parser.add_argument("--set", action="append", help="recipe override a.b=value (repeatable)")
    parser.add_argument("--condition", action="append", default=[],
                        help="NAME=FILE or NAME=TEXT (repeatable)")
    parser.add_argument("--target", action="append", default=[], help="domain to generate (repeatable)")
    parser.add_argument("--steps", type=int, default=8, help="MaskGIT steps of --target image targets")
    parser.add_argument("--tokenizer", action="append", default=[],
                        help="NAME=DIR of a tokenizer directory (ml-4m's format or a fourm_jax artifact); a "
                             "bare NAME loads the shipped one, e.g. tok_depth@64 (repeatable)")
    parser.add_argument("--text_tokenizer", help="text vocabulary (ml-4m's WordPiece JSON or SentencePiece)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--num_samples", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--shape_buckets", type=int, default=4)
    parser.add_argument("--tile", type=int, default=224, help="grid tile size in pixels")
    args = parser.parse_args(argv)

    recipe = _recipe(args)
    conditions = _pairs(args.condition, "--condition")
    missing = sorted(set(recipe.get("conditions", [])) - set(conditions))
    if missing:
        raise SystemExit(f"{args.recipe} expects --condition for {missing}")
    targets = [Target.from_config(t, f"{args.recipe}: targets[{i}]")
               for i, t in enumerate(recipe.get("targets", []))]
    if args.target and targets:  # a subset of the recipe's targets, with its settings
        unknown = sorted(set(args.target) - {t.domain for t in targets})
        if unknown:
            raise SystemExit(f"--target {unknown}: not among {args.recipe}'s targets "
                             f"{[t.domain for t in targets]}")
        targets = [t for t in targets if t.domain in args.target]
    elif args.target:
        targets = [Target(domain, steps=args.steps) for domain in args.target]
    if not targets:
        raise SystemExit("nothing to generate: give --target or a recipe with targets")
    given = _pairs(args.tokenizer, "--tokenizer", bare_ok=True)
    # The recipe's tokenizers for the domains in play (a --target subset leaves some out).
    in_play = set(conditions) | {t.domain for t in targets}
    tokenizer_dirs = {k: v for k, v in (recipe.get("tokenizers") or {}).items() if k in in_play}
    tokenizer_dirs = {k: v for k, v in {**tokenizer_dirs, **given}.items() if v}
    text_path = args.text_tokenizer or recipe.get("text_tokenizer")
    num_samples = args.num_samples or recipe.get("num_samples", 1)
    seed = args.seed if args.seed is not None else recipe.get("seed", 0)

    for name in tokenizer_dirs:
        if not modalities.is_registered(name):
            raise SystemExit(f"--tokenizer {name}: unknown modality")
    config = checkpoint.load_config(args.checkpoint)
    try:
        tokenizers = {name: load_image_tokenizer(path) for name, path in tokenizer_dirs.items()}
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    text_tokenizer = load_text_tokenizer(text_path) if text_path else None
    try:
        build_inputs(config, conditions, targets, tokenizers, text_tokenizer, 1)  # checks before loading
        sampler = GenerationSampler(checkpoint.load_model(args.checkpoint), shape_buckets=args.shape_buckets)
        generated, decoded = generate(sampler, conditions, targets, tokenizers, text_tokenizer,
                                      num_samples=num_samples, top_k=recipe.get("top_k", 0.0),
                                      top_p=recipe.get("top_p", 0.0), seed=seed,
                                      cfg_grow_conditioning=recipe.get("cfg_grow_conditioning", False),
                                      verbose=True)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None

    shown = shown_domains(conditions, targets, tokenizers)
    decodable = [t.domain for t in targets if t.domain in shown]
    out = pathlib.Path(args.out)
    rows = []
    for i in range(num_samples):
        tiles = _row(decoded, shown, i, args.tile)
        for name, image in tiles:
            outputs.write_png(out / f"sample_{i}" / f"{name}.png", image)
        for domain in decodable:
            if modalities.get(domain).kind is Kind.SEQUENCE:
                value = decoded[domain][i]
                text = value if isinstance(value, str) else json.dumps([vars(b) for b in value])
                outputs.write_text(out / f"sample_{i}" / f"{domain}.txt", text + "\n")
        rows.append(tiles)
    outputs.write_png(out / "grid.png", outputs.grid(rows, args.tile))
    outputs.write_npz(out / "tokens.npz", {f"{d}/{k}": generated[d][k] for d in generated
                                           for k in ("tensor", "input_mask")})
    skipped = [t.domain for t in targets if t.domain not in decodable]
    print(json.dumps(dict(out=str(out), samples=num_samples, decoded=decodable,
                          not_decoded_no_tokenizer=skipped)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
