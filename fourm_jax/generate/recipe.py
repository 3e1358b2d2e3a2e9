"""Generation from files and text: conditions -> mod_dict -> schedule -> sampler -> decoded outputs.

The Python face of tools/generate.py, in one call:

    tokenizers = {"tok_depth@64": artifacts.load_tokenizer("tok_depth@64")}   # (VQVAE, variables)
    targets = [Target("tok_depth@64"), Target("caption", tokens=48, temperature=0.3)]
    tokens, decoded = generate(GenerationSampler(model), {"rgb@64": "scene.png"}, targets, tokenizers,
                               text_tokenizer, num_samples=2, top_p=0.8, seed=0)
    tokens["tok_depth@64"]["tensor"]    # int32 [2, 64] generated ids (the whole mod_dict comes back)
    decoded["tok_depth@64"]             # two uint8 [64, 64, 3] images; decoded["caption"]: two strings

or step by step: build_inputs -> build_schedule -> GenerationSampler.generate -> decode_outputs.

Recipes (configs/generate/*.py) hold `conditions`, `targets` (Target fields) and sampling settings.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from fourm_jax import modalities
from fourm_jax.generate import mod_dict as md
from fourm_jax.generate.outputs import decode_outputs, pixel_input
from fourm_jax.generate.schedules import build_chained_generation_schedules, check_registered
from fourm_jax.modalities import Kind
from fourm_jax.model.config import ModelConfig
from fourm_jax.text import layout
from fourm_jax.tokenizers import inputs


@dataclasses.dataclass(frozen=True)
class Target:
    """How one target is generated (build_chained_generation_schedules' per-target arguments).
    tokens: positions to generate (image: the grid, default all; sequence: slots, default 64)."""

    domain: str
    scheme: str | None = None  # default: maskgit for images, autoregressive for sequences
    steps: int = 8
    token_schedule: str = "cosine"
    temperature: float = 1.0
    temp_schedule: str = "constant"
    cfg_scale: float = 1.0
    cfg_schedule: str = "constant"
    tokens: int | None = None

    @classmethod
    def from_config(cls, values: Mapping, where: str) -> Target:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
        if "domain" not in values:
            raise ValueError(f"{where}: needs a `domain`")
        return cls(**values)

    @property
    def kind(self) -> Kind:
        return modalities.get(self.domain).kind

    @property
    def resolved_scheme(self) -> str:
        return self.scheme or ("autoregressive" if self.kind is Kind.SEQUENCE else "maskgit")

    @property
    def num_tokens(self) -> int:
        if self.tokens is not None:
            return self.tokens
        modality = modalities.get(self.domain)
        return modality.max_tokens if self.kind is Kind.IMAGE_TOKENS else 64


def build_schedule(conditions: Sequence[str], targets: Sequence[Target], cfg_grow_conditioning: bool = False):
    """The chained schedule of the targets, in order, guided by the conditions."""
    for t in targets:
        check_registered(f"target {t.domain!r}", t.domain)
    return build_chained_generation_schedules(
        list(conditions), [t.domain for t in targets], [t.num_tokens for t in targets],
        [t.resolved_scheme for t in targets], [t.steps for t in targets], [t.token_schedule for t in targets],
        [t.temperature for t in targets], [t.temp_schedule for t in targets], [t.cfg_scale for t in targets],
        [t.cfg_schedule for t in targets], cfg_grow_conditioning=cfg_grow_conditioning)


def condition_tensor(domain: str, value, tokenizers: Mapping[str, tuple], text_tokenizer) -> np.ndarray:
    """One example of a condition: an image file for pixel inputs (exact size) or image tokens
    (through the domain's tokenizer; a .npy file holds tokens directly), text for sequences."""
    modality = modalities.get(domain)
    if modality.kind is Kind.SEQUENCE:
        if text_tokenizer is None:
            raise ValueError(f"{domain}: a text condition needs the text tokenizer (--text_tokenizer)")
        return np.concatenate([text_tokenizer.encode(str(value)), [layout.EOS_ID]]).astype(np.int32)
    path = pathlib.Path(value)
    if not path.is_file():
        raise ValueError(f"{domain}: {path} is not a file")
    if modality.kind is Kind.IMAGE_PIXELS:
        return pixel_input(inputs.read_file(path, "rgb"), domain, str(path))
    if modality.kind is not Kind.IMAGE_TOKENS:
        raise ValueError(f"{domain} ({modality.kind.value}) cannot be given from a file here")
    n = modality.grid_size**2
    if path.suffix == ".npy":
        tokens = np.load(path).reshape(-1)
        if tokens.size != n or not np.issubdtype(tokens.dtype, np.integer):
            raise ValueError(f"{path}: {domain} takes {n} integer tokens, got {tokens.size} ({tokens.dtype})")
        return tokens.astype(np.int32)
    if domain not in tokenizers:
        raise ValueError(f"{domain}: tokenizing {path} needs its tokenizer (--tokenizer {domain}=DIR)")
    tokenizer, variables = tokenizers[domain]
    config = tokenizer.config
    raw = inputs.read_file(path, config.modality)
    inputs.check_input(config, np.asarray(inputs.normalize(config.modality, raw))[None], str(path),
                       size=(config.image_size, config.image_size))
    tokens = np.asarray(tokenizer.encode(variables, inputs.normalize(config.modality, raw)[None])).reshape(-1)
    if tokens.size != n:
        raise ValueError(f"{path}: its tokenizer gives {tokens.size} tokens, {domain} takes {n}")
    return tokens.astype(np.int32)


def build_inputs(config: ModelConfig, conditions: Mapping[str, object], targets: Sequence[Target],
                 tokenizers: Mapping[str, tuple], text_tokenizer, num_samples: int = 1) -> dict:
    """The mod_dict of num_samples identical rows: the conditions as full inputs, the targets empty.
    Everything is checked against the model before anything runs."""
    for domain in conditions:
        check_registered(f"condition {domain!r}", domain)
        if domain not in config.domains_in:
            raise ValueError(f"condition {domain!r}: the model does not take it; inputs: "
                             f"{', '.join(config.domains_in)}")
    for t in targets:
        check_registered(f"target {t.domain!r}", t.domain)
        if t.domain not in config.domains_out:
            raise ValueError(f"target {t.domain!r}: the model cannot generate it; outputs: "
                             f"{', '.join(config.domains_out)}")
        if t.domain in conditions:
            raise ValueError(f"{t.domain!r} is both a condition and a target")
    mod_dict = {}
    for domain, value in conditions.items():
        mod_dict[domain] = {"tensor": condition_tensor(domain, value, tokenizers, text_tokenizer)[None]}
        md.init_full_input_modality(mod_dict, domain)
    for t in targets:
        md.init_empty_target_modality(mod_dict, t.domain, 1, t.num_tokens)
    return md.expand_to_batch(mod_dict, num_samples)


def generate(sampler, conditions: Mapping[str, object], targets: Sequence[Target],
             tokenizers: Mapping[str, tuple], text_tokenizer=None, *, num_samples: int = 1,
             top_k: int | float = 0.0, top_p: float = 0.0,
             seed: int = 0, cfg_grow_conditioning: bool = False, verbose: bool = False) -> tuple[dict, dict]:
    """(generated mod_dict, decoded): the targets generated from the conditions (files or text, as
    condition_tensor takes them). `decoded` holds every condition and target that can be shown (image
    tokens need their tokenizer): uint8 images, strings, det boxes. Everything is checked before
    anything is compiled."""
    config = sampler.model.config
    mod_dict = build_inputs(config, conditions, targets, tokenizers, text_tokenizer, num_samples)
    schedule = build_schedule(list(conditions), targets, cfg_grow_conditioning)
    if text_tokenizer is None:
        text = [t.domain for t in targets if t.kind is Kind.SEQUENCE]
        if text:
            raise ValueError(f"targets {text}: decoding sequences needs the text tokenizer "
                             "(--text_tokenizer)")
    generated = sampler.generate(mod_dict, schedule, top_k, top_p, seed=seed, verbose=verbose)
    return generated, decode_outputs(generated, shown_domains(conditions, targets, tokenizers), tokenizers,
                                     text_tokenizer)


def shown_domains(conditions: Sequence[str], targets: Sequence[Target], tokenizers: Mapping) -> list[str]:
    """The conditions, then the targets, that can be displayed (image tokens only with a tokenizer)."""
    return [d for d in [*conditions, *(t.domain for t in targets)]
            if modalities.get(d).kind is not Kind.IMAGE_TOKENS or d in tokenizers]
