"""RunConfig: every option of `diffeval run` (the bench options plus the later stages')."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffeval.crosscoders.config import ARCHITECTURES, CrossCoderConfig
from diffeval.harness.core.config import ActivationsConfig, BenchConfig, opt
from diffeval.harness.core.errors import DiffevalError
from diffeval.harness.core.presets import EXPANSION, PRESETS
from diffeval.harness.core.stageconfig import (
    PROBE_TOKENS,
    ActivationsStageConfig,
    AttributionConfig,
    CausalConfig,
    CrosscoderStageConfig,
    LatentsConfig,
    ProbesConfig,
    StageConfigs,
    TranscriptsConfig,
)

SPECIFIC_BY = ("latent_scaling", "delta_norm")
HEADLINE_MEASURE = "cue_shift"  # the measure of the report's headline (harness/stages/headline.py)
HEADLINE_NULL = "drift_or_other_categories"  # its baseline, the larger of the two; a validation holds for one null
ATTRIBUTION_SHIFTS = ("auto", HEADLINE_MEASURE, "share", "usage", "mass")
CAUSAL_MODES = ("ablate", "revert")
ANNOTATORS = ("enrichment", "llm")
STREAM_CACHE_ROWS = 50_000  # the activation cache a streamed run keeps for latent statistics and attribution
MIN_SPECIFIC = 10  # N^T or N^B below this: too few model-specific latents for share ratios


def n_latents_for(n_latents: int, d_model: int) -> int:
    """The crosscoder's dictionary size for hidden size `d_model`: `n_latents`, or EXPANSION × d_model when it is 0."""
    return n_latents or EXPANSION * d_model


@dataclass(frozen=True)
class RunConfig(BenchConfig):
    """The whole pipeline's configuration; serialised as the run's config.json."""

    layer: float = opt(ActivationsConfig.layer, "crosscoder layer: block index, or a fraction of depth in (0, 1) (0.5 = middle)")
    tokens: int = opt(ActivationsConfig.tokens, "activation rows (token positions) to train the crosscoder on")
    seq_len: int = opt(ActivationsConfig.seq_len, "longest corpus sequence, in tokens")
    corpus: tuple[str, ...] = opt((), "corpus files for the crosscoder (.txt lines or .jsonl 'text'); empty = shipped default")
    n_latents: int = opt(0, f"crosscoder dictionary size; 0 = {EXPANSION} × the hidden size")
    k: int = opt(CrossCoderConfig.k, "active latents per token on average (BatchTopK)")
    architecture: str = opt(CrossCoderConfig.architecture, "crosscoder architecture: batchtopk or l1")
    n_steps: int = opt(CrossCoderConfig.n_steps, "crosscoder training steps")
    preset: str | None = opt(None, "crosscoder budget: quick, standard or paper (sets --tokens, --n-latents, --k and "
                             "--n-steps where they are not given; docs/real-pairs.md); none = quick on a CPU or "
                             "for models under 100 M parameters, standard on a GPU")
    stream: bool = opt(False, "train the crosscoder on paired activations computed on the fly (both models resident, "
                       "a shuffle buffer) instead of a disk cache of --tokens rows; the activation cache then holds "
                       f"only the first {STREAM_CACHE_ROWS} rows, for the analysis stages")
    crosscoder: str | None = opt(None, "a trained crosscoder to use instead of training one: a diffeval crosscoder "
                                 "folder or a dictionary_learning checkpoint (.pt, .safetensors, or a folder of "
                                 "model.safetensors + config.json); --n-latents, --k, --architecture and --n-steps "
                                 "are then unused, and --layer must be the layer it was trained at")
    categories: str | None = opt(None, "taxonomy YAML (replaces the shipped one, or adds to it with 'extends: shipped')")
    probes_dir: str | None = opt(None, "directory of <category>.jsonl probe corpora overriding the taxonomy's")
    probe_responses: int = opt(32, "new tokens each model writes after every probe text (one line, greedy); the annotator "
                               "and the usage shift read prompt + response; 0 = probe texts only, no usage shift")
    corpus_responses: bool = opt(False, "add the probe transcripts (each probe text with each model's response) to "
                                 "the crosscoder's corpus, so it is trained on the answer positions too")
    alpha: float = opt(0.05, "false discovery rate of the latent → category enrichment tests")
    annotator: str = opt("enrichment", "how latents get categories: enrichment (each category's probe corpus, "
                         "BH-FDR at --alpha) or llm (an OpenAI-compatible endpoint labels each latent's top contexts)")
    annotator_url: str | None = opt(None, "base URL of the LLM annotator's endpoint, e.g. http://localhost:8000/v1 "
                              "(API key from $OPENAI_API_KEY)")
    annotator_model: str | None = opt(None, "model name the LLM annotator asks")
    specific_by: str = opt("latent_scaling", "model-specific latents: latent_scaling (Δnorm and ν) or delta_norm (Δnorm only)")
    attribution_shift: str = opt("auto", "shift that predicts task deltas: cue_shift (the headline measure, signed by "
                                 "the reference answers; auto is cue_shift), share (log share ratio of model-specific "
                                 "latents), mass (relative decoded-mass shift) or usage (the behavioural readout)")
    reference: str | None = opt(None, "reference model R: tuned- and base-specific latents are taken against R")
    causal: bool = opt(False, "re-score each task with its category's latents reverted or ablated (--causal-mode)")
    causal_mode: str = opt("revert", "revert: undo fine-tuning's change to all of the task category's latents, "
                           "beside a same-size random control set; ablate: zero its tuned-specific latents (the study's form)")
    causal_controls: int = opt(20, "random latent sets of the category's size reverted per task (--causal-mode revert): "
                               "the null distribution of the share removed, and control_p")
    bench_seed: int | None = opt(None, "seed of the bench stage (lm-eval's sampling, the paired bootstrap); none = --seed. "
                                 "Set it to vary --seed (the crosscoder's) without re-running the benchmarks")
    organism: str | None = opt(None, "the model organism to run when no models are given (`diffeval organisms list`; "
                               "default: toyworld); recorded in config.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokens < 1000:
            raise DiffevalError(f"tokens must be >= 1000 to train a crosscoder, got {self.tokens}")
        if self.probe_responses < 0:
            raise DiffevalError(f"probe_responses must be >= 0 (0 = no responses), got {self.probe_responses}")
        if self.corpus_responses and not self.probe_responses:
            raise DiffevalError("corpus_responses needs probe transcripts: set probe_responses > 0")
        if self.n_latents < 0 or self.k < 1 or self.n_steps < 1:
            raise DiffevalError("n_latents must be >= 0 (0 = automatic), k and n_steps >= 1")
        if not 0 < self.alpha < 1:
            raise DiffevalError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.preset is not None and self.preset not in PRESETS:
            raise DiffevalError(f"preset {self.preset!r} must be one of {', '.join(PRESETS)}")
        if self.crosscoder is not None and not Path(self.crosscoder).exists():
            raise DiffevalError(f"crosscoder {self.crosscoder} does not exist (pass a diffeval crosscoder folder or a "
                                "dictionary_learning checkpoint: .pt, .safetensors, or model.safetensors + config.json)")
        if self.annotator not in ANNOTATORS:
            raise DiffevalError(f"annotator {self.annotator!r} must be one of {', '.join(ANNOTATORS)}")
        if self.annotator == "llm" and not (self.annotator_url and self.annotator_model):
            raise DiffevalError("annotator llm needs annotator_url and annotator_model (--annotator-url URL --annotator-model NAME)")
        if self.specific_by not in SPECIFIC_BY:
            raise DiffevalError(f"specific_by {self.specific_by!r} must be one of {', '.join(SPECIFIC_BY)}")
        if self.attribution_shift not in ATTRIBUTION_SHIFTS:
            raise DiffevalError(f"attribution_shift {self.attribution_shift!r} must be one of {', '.join(ATTRIBUTION_SHIFTS)}")
        if self.causal_controls < 0:
            raise DiffevalError(f"causal_controls must be >= 0 (0 = no control sets), got {self.causal_controls}")
        if self.causal_mode not in CAUSAL_MODES:
            raise DiffevalError(f"causal_mode {self.causal_mode!r} must be one of {', '.join(CAUSAL_MODES)}")
        if self.architecture not in ARCHITECTURES:
            raise DiffevalError(f"architecture {self.architecture!r} must be one of {', '.join(ARCHITECTURES)}")

    def activations(self, **overrides: Any) -> ActivationsConfig:
        """The activation collection's config: the models, layer, sequence length, task folders, device and
        dtype of this run; `overrides` set what differs between the corpus and the probe collection."""
        return ActivationsConfig(base=self.base, tuned=self.tuned, layer=self.layer, seq_len=self.seq_len,
                                 tasks_dir=self.tasks_dir, device=self.device, model_devices=self.model_devices(),
                                 dtype=self.dtype, store_dtype=self.store_dtype(), **overrides)

    def store_dtype(self) -> str:
        """The activation cache's dtype: bfloat16 when the models run on a GPU (half the disk of float32, the
        precision the models compute in there), float32 on a CPU."""
        return "bfloat16" if any(d.startswith("cuda") for d in (self.device, *self.model_devices())) else "float32"

    def streams(self) -> bool:
        """Whether the crosscoder trains on streamed activations (--stream, and no --crosscoder given)."""
        return self.stream and self.crosscoder is None

    def stages(self) -> StageConfigs:
        """Each stage's own config (what its cache key hashes); the pipeline passes stage X `stages().X`."""
        probes = ProbesConfig(categories=self.categories, probes_dir=self.probes_dir)
        transcripts = (TranscriptsConfig(probes=probes, base=self.base, tuned=self.tuned, dtype=self.dtype,
                                         max_new_tokens=self.probe_responses, device=self.device,
                                         model_devices=self.model_devices())
                       if self.probe_responses else None)
        bench = self.bench()

        def corpus(tokens: int) -> ActivationsStageConfig:
            return ActivationsStageConfig(collect=self.activations(tokens=tokens, corpus=self.corpus, tasks=self.tasks),
                                          transcripts=transcripts if self.corpus_responses else None)

        streamed = self.streams()
        return StageConfigs(
            bench=bench,
            activations=corpus(min(self.tokens, STREAM_CACHE_ROWS) if streamed else self.tokens),
            crosscoder=CrosscoderStageConfig(n_latents=self.n_latents, k=self.k, n_steps=self.n_steps,
                                             architecture=self.architecture, seed=self.seed, device=self.device,
                                             source=self.crosscoder, stream=corpus(self.tokens) if streamed else None),
            latents=LatentsConfig(probes=probes, collect=self.activations(tokens=PROBE_TOKENS), transcripts=transcripts,
                                  alpha=self.alpha, annotator=self.annotator, annotator_url=self.annotator_url,
                                  annotator_model=self.annotator_model, device=self.device),
            attribution=AttributionConfig(probes=probes, specific_by=self.specific_by, shift=self.attribution_shift,
                                          alpha=self.alpha, seed=self.seed, reference=self.reference,
                                          device=self.device),
            causal=(CausalConfig(bench=bench, mode=self.causal_mode, specific_by=self.specific_by, seed=self.seed,
                                 controls=self.causal_controls)
                    if self.causal else None),
        )

    def bench(self) -> BenchConfig:
        """The bench stage's part (so later-stage options never invalidate the benchmark cache)."""
        names = {f.name for f in dataclasses.fields(BenchConfig)}
        bench = BenchConfig(**{n: getattr(self, n) for n in names})
        return bench if self.bench_seed is None else dataclasses.replace(bench, seed=self.bench_seed)
