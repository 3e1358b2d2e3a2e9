"""The demo (`make demo`): build the scenes dataset, pretokenize it, train a tiny 4M, plot its losses.

    python tools/demo.py [--workdir runs/demo] [--data_dir data] [--steps 1500]

1. tools/build_scenes.py renders data/scenes/64px (4,000 + 200 examples; an existing build of any
   size is used as it is);
2. tools/pretokenize.py encodes the image modalities whose tokenizer is shipped in
   tokenizers/scenes_64/<rgb|depth|normal|semseg> (those present; none: RGB pixels and text only);
3. tools/train.py trains configs/demo.py on them in <workdir>/<modalities> with checkpoints;
4. the per-modality training and held-out losses are printed and plotted to <run>/losses.png;
5. tools/generate.py predicts every target of the model from the RGB pixels of a held-out scene
   (<run>/samples/grid.png), and tools/eval_generation.py scores depth, segmentation and captions
   generated from RGB on --quality_scenes held-out scenes (<run>/quality/quality.md).

Every step resumes: rerunning the command continues where it stopped (the run from its latest
checkpoint). A new tokenizer appearing under tokenizers/scenes_64 starts a new run directory.
"""

import argparse
import json
import pathlib
import subprocess
import sys
import time

from fourm_jax import configs
from fourm_jax.data import records
from fourm_jax.data.errors import DataError
from fourm_jax.generate import outputs
from fourm_jax.tokenizers import artifacts, ml4m
from fourm_jax.train.metrics import read_jsonl

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKENIZED_FIELDS = ("rgb", "depth", "normal", "semseg")


def shipped_tokenizers(directory: pathlib.Path) -> list[str]:
    """The fields of TOKENIZED_FIELDS with a tokenizer artifact under `directory`."""
    return [field for field in TOKENIZED_FIELDS if (directory / field / ml4m.WEIGHTS_FILE).is_file()]


def _run(step: str, command: list[str]) -> None:
    print(f"== {step}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=REPO)
    if result.returncode:
        raise SystemExit(f"demo: {step} failed (exit code {result.returncode})")
    print(f"== {step}: done in {time.perf_counter() - started:.0f} s", flush=True)


def loss_table(rows: list[dict]) -> str:
    """Training loss per modality at the first and last logged step, and every held-out evaluation."""
    train = [row for row in rows if "loss" in row]
    names = sorted(key.removeprefix("loss/") for key in train[-1] if key.startswith("loss/"))
    lines = [f"{'step':>6} {'split':>5} {'total':>7} " + " ".join(f"{n:>14}" for n in names)]
    for row in (train[0], train[-1]):
        lines.append(f"{row['step']:>6} {'train':>5} {row['loss']:7.3f} "
                     + " ".join(f"{row[f'loss/{n}']:14.3f}" for n in names))
    for row in rows:
        if "eval/loss" in row:
            lines.append(f"{row['step']:>6} {'eval':>5} {row['eval/loss']:7.3f} "
                         + " ".join(f"{row.get(f'eval/loss/{n}', float('nan')):14.3f}" for n in names))
    return "\n".join(lines)


def plot_losses(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [row for row in rows if "loss" in row]
    evals = [row for row in rows if "eval/loss" in row]
    names = sorted(key.removeprefix("loss/") for key in train[-1] if key.startswith("loss/"))
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    for index, name in enumerate(names):
        color = f"C{index}"
        axes[0].plot([r["step"] for r in train], [r[f"loss/{name}"] for r in train], color=color, label=name)
        if evals:
            axes[1].plot([r["step"] for r in evals], [r[f"eval/loss/{name}"] for r in evals], "o-",
                         color=color, label=name)
    for axis, title in zip(axes, ("training loss (per logged window)", "held-out loss"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("cross-entropy")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=110)
    plt.close(figure)
    tmp.replace(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/demo")
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--num_train", type=int, default=4000)
    parser.add_argument("--num_validation", type=int, default=200)
    parser.add_argument("--tokenizers", default=str(artifacts.SHIPPED_DIR / "scenes_64"),
                        help="folder of tokenizer artifacts (<field>/model.safetensors)")
    parser.add_argument("--n_crops", type=int, default=1,
                        help="pretokenized crops per image (1: the centre crop; more cost encoder time)")
    parser.add_argument("--steps", type=int, default=0, help="training steps (0: configs/demo.py's)")
    parser.add_argument("--override", action="append", default=[], help="extra --config.FIELD=VALUE")
    parser.add_argument("--quality_scenes", type=int, default=32,
                        help="held-out scenes scored by tools/eval_generation.py (0: skip)")
    args = parser.parse_args(argv)
    data_dir = pathlib.Path(args.data_dir).absolute()

    try:  # a finished build of any size (e.g. `make tokenizers`' 10,000 examples) is used as it is
        existing = len(records.open_dataset("scenes/64px", "train", data_dir=data_dir, verify=False))
        print(f"== scenes dataset: using the {existing} training examples in {data_dir}/scenes/64px",
              flush=True)
    except (FileNotFoundError, ValueError, DataError):
        _run("scenes dataset", ["tools/build_scenes.py", f"--data_dir={data_dir}", "--image_size=64",
                                f"--num_train={args.num_train}", f"--num_validation={args.num_validation}"])
    tokenizers = pathlib.Path(args.tokenizers)
    fields = shipped_tokenizers(tokenizers)
    token_modalities = [f"tok_{field}@64" for field in fields]
    label = "+".join(["rgb", "text", *token_modalities])
    overrides = [f"data.datasets.scenes.data_dir={data_dir}", *args.override]
    if fields:
        tokenized = data_dir / "scenes_tok" / f"64px_{'_'.join(fields)}" / "1.0.0"
        _run("pretokenize", ["tools/pretokenize.py", "--source=scenes/64px", f"--data_dir={data_dir}",
                             "--tokenizers=" + ",".join(str(tokenizers / f) for f in fields),
                             f"--out={tokenized}", f"--n_crops={args.n_crops}", "--drop=scene"])
        overrides.append(f"data.datasets.scenes.path={tokenized}")
    else:
        print(f"== no tokenizers under {tokenizers}: training on RGB pixels, captions and boxes", flush=True)
    if args.steps:
        overrides.append(f"train.total_steps={args.steps}")
    run_dir = pathlib.Path(args.workdir).absolute() / label
    config = "configs/demo.py" + (":" + ",".join(token_modalities) if token_modalities else "")
    _run("training", ["tools/train.py", f"--config={config}", f"--workdir={run_dir}",
                      *[f"--config.{o}" for o in overrides]])

    rows = read_jsonl(run_dir / "metrics.jsonl")
    print(loss_table(rows))
    plot_losses(rows, run_dir / "losses.png")

    vocab = configs.load(str(REPO / config)).data.text_tokenizer
    scene = run_dir / "samples" / "scene.png"
    outputs.write_png(scene, records.open_dataset("scenes/64px", "validation", data_dir=data_dir)[0]["rgb"])
    targets = [*token_modalities[1:], "caption", "det"]  # tok_rgb@64 is the input's own tokens
    _run("samples", ["tools/generate.py", f"--checkpoint={run_dir / 'checkpoints'}",
                     "--recipe=configs/generate/scenes_rgb_to_all.py", f"--condition=rgb@64={scene}",
                     *[f"--target={t}" for t in targets], f"--text_tokenizer={vocab}",
                     *[f"--tokenizer=tok_{f}@64={tokenizers / f}" for f in fields],
                     "--num_samples=2", f"--out={run_dir / 'samples'}"])
    if args.quality_scenes:
        _run("quality", ["tools/eval_generation.py", f"--checkpoint={run_dir / 'checkpoints'}",
                         f"--data_dir={data_dir}", f"--text_tokenizer={vocab}",
                         f"--num_scenes={args.quality_scenes}", f"--out={run_dir / 'quality'}",
                         *[f"--tokenizer=tok_{f}@64={tokenizers / f}" for f in fields
                           if f in ("depth", "semseg")]])
    print(json.dumps(dict(run=str(run_dir), plot=str(run_dir / "losses.png"), steps=rows[-1]["step"],
                          samples=str(run_dir / "samples" / "grid.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
