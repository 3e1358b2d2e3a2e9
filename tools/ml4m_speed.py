"""ml-4m's own code in the settings of `tools/bench.py model` and `generate`, for side-by-side numbers.

    python tools/ml4m_speed.py --ml4m PATH/TO/ml-4m --threads 2 generate
    python tools/ml4m_speed.py --ml4m PATH/TO/ml-4m --device cuda model \
        --variant fm_base_12e_12d_swiglu_nobias --dtype bfloat16 --batch-size 64

Needs torch and an ml-4m checkout (github apple/ml-4m; not a dependency of fourm_jax). Builds ml-4m's
FM with random weights and
- generate: times `GenerationSampler.generate` on bench_generate's work (fm_tiny_6e_6d_gelu, MaskGIT
  tok_rgb@224 -> tok_depth@224 in images/s, a 32-token autoregressive caption in tokens/s, float32,
  temperature 1);
- model: times a forward+backward (parameter gradients, ml-4m's `mod` loss) of bench_model's batch
  (fourm_jax.model.example_batch, same seed), float32 or under bfloat16 autocast.
Prints one JSON object whose `results` keys and fields match the fourm_jax benchmark's.
"""

import argparse
import functools
import importlib.abc
import importlib.machinery
import json
import pathlib
import platform
import random
import sys
import types

from timing import rate_entry, time_runs

DOMAINS_IN = ("rgb@224", "tok_rgb@224", "tok_depth@224", "caption")
DOMAINS_OUT = ("tok_rgb@224", "tok_depth@224", "caption")
# ml-4m's FM config (its release config.json keys) of the variants benchmarked here.
VARIANTS = {
    "fm_tiny_6e_6d_gelu": dict(encoder_depth=6, decoder_depth=6, dim=384, num_heads=6, mlp_ratio=4,
                               qkv_bias=True, proj_bias=True, mlp_bias=True, norm_bias=True,
                               act_layer="GELU", gated_mlp=False),
    "fm_base_12e_12d_swiglu_nobias": dict(encoder_depth=12, decoder_depth=12, dim=768, num_heads=12,
                                          mlp_ratio=4, qkv_bias=False, proj_bias=False, mlp_bias=False,
                                          norm_bias=False, act_layer="SiLU", gated_mlp=True),
}
# Imported by `fourm.utils` / `fourm.data` for training and data loading, never on the sampling path.
OPTIONAL_IMPORTS = ("albumentations", "boto3", "botocore", "braceexpand", "datasets", "diffusers",
                    "pycocotools", "smart_open", "torchvision", "wandb", "webdataset")


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an empty stand-in for an optional package that is not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] not in OPTIONAL_IMPORTS:
            return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def getattr_(attr):
            if attr.startswith("__"):  # __file__ and the like stay absent, for whatever scans modules
                raise AttributeError(f"module {spec.name!r} has no attribute {attr!r}")
            return module.__dict__.setdefault(attr, self.placeholder(f"{spec.name}.{attr}"))

        module.__getattr__ = getattr_
        return module

    def exec_module(self, module):
        pass

    @staticmethod
    def placeholder(name):
        """A class that accepts any construction or call (used as a base class or decorator)."""
        def accept(self, *args, **kwargs):
            return None

        return type(name.rsplit(".", 1)[-1], (), {"__module__": name.rsplit(".", 1)[0], "__init__": accept,
                                                   "__call__": accept})


def _import_ml4m(root: pathlib.Path):
    """fourm.models.fm / generate from the checkout at root; optional packages may be absent."""
    if not (root / "fourm" / "models" / "generate.py").is_file():
        raise SystemExit(f"--ml4m {root}: no fourm/models/generate.py there (expected an ml-4m checkout)")
    sys.path.insert(0, str(root))
    sys.meta_path.append(_Absent())
    from fourm.models import fm, generate

    # fm.FourM.forward shuffles modalities with random.sample(dict.items(), n), which Python >= 3.11
    # refuses; Python 3.10 sampled the items as a sequence, as this does.
    fm.random = types.ModuleType("random")
    fm.random.__dict__.update(random.__dict__)
    fm.random.sample = lambda population, k, **kwargs: random.sample(list(population), k, **kwargs)
    return fm, generate


def _build(fm, variant: str, domains_in, domains_out, device):
    import torch

    torch.manual_seed(0)
    config = dict(VARIANTS[variant], image_size=224, patch_size=16, domains_in=list(domains_in),
                  domains_out=list(domains_out))
    return fm.FM(config).to(device)


def run_generate(args, fm, gen, device, sync) -> dict:
    import torch

    from tokenizers import Tokenizer

    model = _build(fm, "fm_tiny_6e_6d_gelu", DOMAINS_IN, DOMAINS_OUT, device).eval()
    sampler = gen.GenerationSampler(model)
    text_tokenizer = Tokenizer.from_file(str(args.text_tokenizer))
    vocab = model.modality_info["tok_rgb@224"]["vocab_size"]

    def condition(batch_size):
        return {"tok_rgb@224": dict(
            tensor=torch.randint(0, vocab, (batch_size, 196), device=device),
            input_mask=torch.zeros(batch_size, 196, dtype=torch.bool, device=device),
            target_mask=torch.ones(batch_size, 196, dtype=torch.bool, device=device))}

    def schedule(target, tokens, scheme, steps):
        return gen.build_chained_generation_schedules(
            cond_domains=["tok_rgb@224"], target_domains=[target], tokens_per_target=[tokens],
            autoregression_schemes=[scheme], decoding_steps=[steps], token_decoding_schedules=["cosine"],
            temps=[1.0], temp_schedules=["constant"], cfg_scales=[1.0], cfg_schedules=["constant"])

    def run(mod_dict, plan, seed):
        fresh = {domain: {k: v.clone() for k, v in d.items()} for domain, d in mod_dict.items()}
        with torch.no_grad():
            return sampler.generate(fresh, plan, text_tokenizer=text_tokenizer, seed=seed)

    results = {}
    which = args.which.split(",")
    for batch_size in map(int, args.batch_sizes.split(",")):
        if "maskgit" in which:
            for steps in map(int, args.steps.split(",")):
                mod_dict = gen.init_empty_target_modality(
                    condition(batch_size), model.modality_info, "tok_depth@224", batch_size, 196, device)
                plan = schedule("tok_depth@224", 196, "maskgit", steps)
                timing = time_runs(functools.partial(run, mod_dict, plan, 1), args.repeats, sync)
                results[f"maskgit_{steps}_batch{batch_size}"] = rate_entry("images/s", batch_size, *timing)
        if "caption" in which:
            n = args.caption_tokens
            mod_dict = gen.init_empty_target_modality(
                condition(batch_size), model.modality_info, "caption", batch_size, n + 1, device)
            plan = schedule("caption", n, "autoregressive", 1)
            # ml-4m's loop decodes one token per target position (n) unless every row draws the EOS
            # sentinel, which random weights practically never do (as in bench_generate).
            timing = time_runs(functools.partial(run, mod_dict, plan, 2), args.repeats, sync)
            results[f"caption_{n}_batch{batch_size}"] = rate_entry("tokens/s", batch_size * n, *timing,
                                                                   tokens=n)
    return dict(variant="fm_tiny_6e_6d_gelu", dtype="float32", results=results)


def run_model(args, fm, device, sync) -> dict:
    import torch

    from fourm_jax.model.example_batch import example_batch

    inputs, outputs = args.inputs.split(","), args.outputs.split(",")
    model = _build(fm, args.variant, inputs, outputs, device).train()
    host_batch = example_batch(inputs, outputs, args.batch_size, args.input_tokens, args.target_tokens,
                               seed=0, text_tokens=args.text_tokens)
    batch = {name: {key: torch.from_numpy(value.astype("int64") if value.dtype.kind == "i" and key == "tensor"
                                          else value).to(device) for key, value in d.items()}
             for name, d in host_batch.items()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step():
        model.zero_grad(set_to_none=True)
        with autocast:
            loss, _ = model(batch, args.input_tokens, args.target_tokens, loss_type="mod")
        loss.backward()

    first, seconds, cpu = time_runs(step, args.repeats, sync)
    tokens = args.batch_size * (args.input_tokens + args.target_tokens)
    return dict(variant=args.variant, inputs=inputs, outputs=outputs, batch_size=args.batch_size,
                input_tokens=args.input_tokens, target_tokens=args.target_tokens,
                text_tokens=args.text_tokens, dtype=args.dtype,
                parameters=sum(p.numel() for p in model.parameters()),
                results={"ml4m": dict(step_s_median=seconds, compile_and_first_step_s=first,
                                      process_cpu_s_median=cpu, tokens_per_s=tokens / seconds)})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml4m", type=pathlib.Path, required=True, help="root of an ml-4m checkout")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    generate = sub.add_parser("generate", help="bench_generate's setting")
    generate.add_argument("--text-tokenizer", type=pathlib.Path,
                          default=pathlib.Path(__file__).resolve().parents[2] / "shared" / "vocab"
                          / "text_tokenizer_4m_wordpiece_30k.json")
    generate.add_argument("--batch-sizes", default="1,8")
    generate.add_argument("--steps", default="8,32")
    generate.add_argument("--caption-tokens", type=int, default=32)
    generate.add_argument("--which", default="maskgit,caption")
    model = sub.add_parser("model", help="bench_model's setting")
    model.add_argument("--variant", default="fm_tiny_6e_6d_gelu", choices=sorted(VARIANTS))
    model.add_argument("--inputs", default="rgb@224,tok_rgb@224,caption")
    model.add_argument("--outputs", default="tok_rgb@224,tok_depth@224,caption")
    model.add_argument("--batch-size", type=int, default=8)
    model.add_argument("--input-tokens", type=int, default=128)
    model.add_argument("--target-tokens", type=int, default=128)
    model.add_argument("--text-tokens", type=int, default=24)
    model.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    fm, gen = _import_ml4m(args.ml4m.resolve())

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.benchmark == "generate":
        result = run_generate(args, fm, gen, device, sync)
    else:
        result = run_model(args, fm, device, sync)
    machine = dict(platform=device.type, device_kind=torch.cuda.get_device_name() if device.type == "cuda"
                   else platform.processor(), torch=torch.__version__, threads=torch.get_num_threads(),
                   host=platform.node(), python=platform.python_version())
    print(json.dumps(dict(benchmark=f"ml4m_{args.benchmark}", machine=machine, **result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
