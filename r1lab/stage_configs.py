"""Every stage kind's settings: the typed configs a recipe's stages are read into, and which kind is which.

They live apart from the trainers (which import torch) so that a recipe is read and checked, and its mistakes
reported, without importing torch (README, "Running it"). Each trainer module imports its config from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r1lab.config import Problem, adam_betas_problems, at_least, doc, positive, raise_problems, within
from r1lab.tasks import TaskConfig


# --- online RL: GRPO and PPO ---------------------------------------------------------------------------------

@dataclass
class OnlineRLConfig:
    """The settings GRPO and PPO share: the rollout, the rewards, the optimizer and the log. Each trainer's config
    adds its algorithm's own fields."""

    init: str = doc("", "Checkpoint to start from: an earlier stage's name, a path or hub id (empty: previous stage).")
    steps: int = doc(200, "RL steps (one rollout each).")
    prompts_per_step: int = doc(16, "Training problems per step.")
    max_new_tokens: int = doc(64, "Longest completion; longer ones are cut and count as truncated.")
    temperature: float = doc(1.0, "Sampling temperature for rollouts (R1-Zero: 1.0).")
    top_p: float = doc(1.0, "Nucleus sampling for rollouts (1.0 keeps sampler and trainer logprobs consistent).")
    top_k: int = doc(0, "Top-k sampling for rollouts (0: off).")
    lr: float = doc(1e-4, "Peak learning rate of the policy (AdamW).")
    lr_schedule: Literal["constant", "cosine", "linear"] = doc("constant", "Decay after the warmup (to 10% at the "
                                                                           "end).")
    warmup_steps: int = doc(5, "Linear learning-rate warmup from 0 (the first step only fills AdamW's moments, as "
                               "in transformers' schedulers) to the peak at this step.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    adam_betas: list[float] = doc([0.9, 0.99], "AdamW β1, β2 (β2 0.99: second moments that follow the fast-moving "
                                               "RL gradients).")
    max_grad_norm: float = doc(1.0, "Gradient clipping by the global norm of every trained weight (0: off).")
    mask_truncated: bool = doc(False, "No loss on completions cut at max_new_tokens (DAPO overlong filtering).")
    rewards: dict[str, float] = doc({"accuracy": 1.0, "format": 0.1},
                                    "Reward name, module:function or file.py:function -> weight.")
    rewards_by_task: dict[str, dict[str, float]] = doc(
        {}, "Per source task (an example's 'task' field), a reward set used instead of `rewards`, e.g. "
            "{domain: {'reward_model:rm': 1.0}} (R1's all-scenario RL; 'reward_model:<stage>' names a reward_model "
            "stage of this run).")
    task: TaskConfig = doc(TaskConfig(name=""), "Training prompts from this task instead of the run's (empty name: "
                                                "the run's), e.g. a mixture of reasoning and domain prompts; "
                                                "evaluation stays on the run's task.")
    eval_every: int = doc(25, "Quick held-out evaluation every N steps (0: only at the end).")
    save_every: int = doc(50, "Save a resumable checkpoint every N steps (0: only at the end).")
    log_samples: int = doc(4, "Completions written to samples.jsonl per logged step.")
    samples_every: int = doc(10, "Write samples every N steps.")
    truncation_warning: float = doc(0.5, "Warn when more than this share of a step's completions is cut off (once "
                                         "per stretch of such steps).")
    logprob_gap_warning: float = doc(0.05, "Warn when the mean |logprob(sampler) − logprob(trainer)| of a step's "
                                           "sampled tokens exceeds this (healthy: ~1e-6 in fp32, 0.01-0.02 with a "
                                           "bf16 sampler; a weight-sync bug: ~0.2).")
    eval: bool = doc(True, "Evaluate the final policy on the held-out split.")

    def check(self) -> None:
        """Raise ``ConfigProblems`` with every problem of ``problems()`` (each trainer's ``__post_init__`` calls it)."""
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        """The settings GRPO and PPO share that cannot be used; a trainer's config adds its own."""
        return [*at_least(self, 1, "steps", "prompts_per_step", "max_new_tokens"),
                *at_least(self, 0, "top_k", "warmup_steps", "weight_decay", "max_grad_norm", "eval_every",
                          "save_every", "log_samples", "samples_every"),
                # a group of identical greedy completions has no spread: zero advantage, nothing learnt
                *positive(self, "temperature", why=" for RL rollouts: at 0 (greedy) every completion of a prompt is "
                                                   "the same, so a group has no reward spread to learn from"),
                *within(self, "top_p", 0, 1, open_low=True), *positive(self, "lr"), *adam_betas_problems(self)]

@dataclass
class GRPOConfig(OnlineRLConfig):
    kind: str = doc("grpo", "Stage kind: GRPO reinforcement learning.")
    group_size: int = doc(8, "G: completions sampled per problem.")
    updates_per_rollout: int = doc(1, "μ: passes over each rollout; with μ > 1 the ratio and clipping matter.")
    minibatches: int = doc(1, "Optimizer steps per pass over a rollout.")
    micro_batch_size: int = doc(0, "Sequences per forward/backward; gradients accumulate over a minibatch (0: all).")
    clip_eps: float = doc(0.2, "ε (ε_low): the ratio is clipped to [1 − ε_low, 1 + ε_high].")
    clip_eps_high: float | None = doc(None, "ε_high (DAPO clip-higher: 0.28); empty: equal to clip_eps.")
    kl_coef: float = doc(0.0, "β: weight of the KL penalty to the reference policy (0: no reference model loaded).")
    kl_estimator: Literal["k1", "k2", "k3"] = doc("k3", "KL estimator (GRPO uses k3).")
    ref_reset_every: int = doc(0, "Reset the reference policy to the current one every N steps (R1: 400; 0: never).")
    scale_rewards_by_std: bool = doc(True, "Divide advantages by the group std (Dr. GRPO: false).")
    loss_aggregation: Literal["sequence", "token", "constant"] = doc(
        "token", "sequence: GRPO as printed; token: DAPO; constant: Dr. GRPO (sum / (B × max_new_tokens)).")
    dynamic_sampling: bool = doc(False, "Drop groups whose rewards are all equal and refill the batch (DAPO).")
    dynamic_sampling_rounds: int = doc(3, "Extra rollouts at most per step when refilling with dynamic sampling.")

    def __post_init__(self):
        self.check()

    def problems(self) -> list[Problem]:
        found = [*super().problems(),
                 *at_least(self, 2, "group_size", why=": GRPO's advantage compares completions of one prompt"),
                 *at_least(self, 1, "updates_per_rollout", "minibatches"),
                 *at_least(self, 0, "micro_batch_size", "kl_coef", "ref_reset_every", "dynamic_sampling_rounds"),
                 *positive(self, "clip_eps")]
        if self.clip_eps_high is not None and self.clip_eps_high <= 0:
            found.append(Problem("clip_eps_high", self.clip_eps_high, "must be > 0 (or empty: equal to clip_eps)"))
        if self.minibatches >= 1 and self.prompts_per_step * self.group_size % self.minibatches:
            found.append(Problem("minibatches", self.minibatches, f"must divide prompts_per_step × group_size "
                                                                  f"({self.prompts_per_step * self.group_size})"))
        return found

@dataclass
class PPOConfig(OnlineRLConfig):
    kind: str = doc("ppo", "Stage kind: PPO with a value model, GAE and a per-token KL penalty in the reward.")
    value_init: str = doc("", "Value model start: an earlier stage's name, a value-model folder, a reward model "
                              "(HF sequence classifier) or a causal LM path (empty: the policy's start).")
    group_size: int = doc(4, "Completions sampled per problem (PPO needs no groups; match GRPO to compare).")
    value_lr: float = doc(3e-4, "Peak learning rate of the value model (same schedule as the policy).")
    updates_per_rollout: int = doc(2, "PPO epochs: passes over each rollout.")
    minibatches: int = doc(2, "Optimizer steps per pass over a rollout (near-equal splits of its completions).")
    micro_batch_size: int = doc(0, "Sequences per forward/backward; gradients accumulate over a minibatch (0: all).")
    clip_eps: float = doc(0.2, "ε: the ratio π_θ/π_old is clipped to [1 − ε, 1 + ε_high].")
    clip_eps_high: float | None = doc(None, "ε_high (clip-higher); empty: equal to clip_eps.")
    loss_aggregation: Literal["sequence", "token", "constant"] = doc(
        "token", "How per-token policy losses are averaged: token (all tokens), sequence, constant (B × max_new).")
    value_coef: float = doc(0.1, "c₁: weight of the value loss in the combined loss (acts through the shared "
                                 "gradient clip; value_lr sets the critic's step size).")
    value_clip: float = doc(0.2, "ε_v: new values are clipped to V_old ± ε_v in the value loss (reward units).")
    gamma: float = doc(1.0, "γ: discount per token in GAE.")
    lam: float = doc(0.95, "λ: GAE trade-off (1: Monte Carlo returns, 0: one-step TD).")
    kl_coef: float = doc(0.02, "β: per-token KL penalty in the reward, initial value when adaptive "
                               "(0: no reference model loaded).")
    kl_estimator: Literal["k1", "k3"] = doc("k1", "KL estimator in the reward: k1 = log π_old − log π_ref, or k3.")
    target_kl: float | None = doc(None, "Adaptive β (Ziegler et al. 2019): target KL per completion, nats summed "
                                        "over its tokens; empty: β fixed.")
    kl_horizon: int = doc(10000, "Adaptive β horizon in completions: β moves by at most ×(1 ± 0.2·n/horizon) a step.")
    whiten_rewards: bool = doc(False, "Divide per-token rewards by their std over the rollout (mean kept).")
    whiten_advantages: bool = doc(True, "Normalise advantages to mean 0, std 1 over the rollout's tokens.")

    def __post_init__(self):
        self.check()

    def problems(self) -> list[Problem]:
        found = [*super().problems(), *at_least(self, 1, "group_size", "minibatches", "updates_per_rollout"),
                 *at_least(self, 0, "micro_batch_size", "value_coef", "value_clip", "kl_coef"),
                 *positive(self, "value_lr", "clip_eps", "kl_horizon"),
                 *[Problem(name, getattr(self, name), "gamma and lam must lie in [0, 1]")
                   for name in ("gamma", "lam") if not 0 <= getattr(self, name) <= 1]]
        if self.clip_eps_high is not None and self.clip_eps_high <= 0:
            found.append(Problem("clip_eps_high", self.clip_eps_high, "must be > 0 (or empty: equal to clip_eps)"))
        if self.target_kl is not None and (self.kl_coef <= 0 or self.target_kl <= 0):
            found.append(Problem("target_kl", self.target_kl, f"an adaptive KL coefficient (target_kl) needs "
                                 f"kl_coef > 0 (it is {self.kl_coef}) and target_kl > 0: it multiplies β, so β = 0 "
                                 f"would stay 0"))
        return found

# --- training on a fixed data set: SFT, DPO, the reward model ---------------------------------------------------

@dataclass
class FixedDataConfig:
    """The settings SFT, DPO and the reward-model trainer share; each trainer's config adds its own."""

    init: str = doc("", "Checkpoint to start from: an earlier stage's name, a path or hub id (empty: previous stage).")
    data: str = doc("", "JSONL file, or the name of an earlier stage that wrote one.")
    epochs: int = doc(1, "Passes over the training examples.")
    max_steps: int = doc(0, "Stop after this many optimizer steps (0: all epochs); the schedule spans the steps run.")
    batch_size: int = doc(32, "Examples per optimizer step; its micro-batches accumulate gradients.")
    max_length: int = doc(1024, "Longest prompt + completion in tokens; longer examples are dropped with a warning, "
                                "never truncated.")
    lr: float = doc(5e-5, "Peak learning rate (AdamW).")
    min_lr_ratio: float = doc(0.1, "The cosine decay ends at lr × this (R1: 5e-5 → 5e-6).")
    warmup_ratio: float = doc(0.03, "Share of the optimizer steps spent in linear warmup.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    adam_betas: list[float] = doc([0.9, 0.999], "AdamW β1, β2.")
    max_grad_norm: float = doc(1.0, "Gradient clipping by global norm (0: off).")
    eval_fraction: float = doc(0.05, "Share of prompts held out (split by a hash of the prompt).")
    eval_every: int = doc(0, "Held-out metrics every N steps (0: only at the end).")
    save_every: int = doc(100, "Save a resumable checkpoint every N steps (0: only at the end).")
    eval: bool = doc(True, "Evaluate the final policy on the task's held-out problems.")

    def check(self) -> None:
        """Raise ``ConfigProblems`` with every problem of ``problems()`` (each trainer's ``__post_init__`` calls it)."""
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        """The shared settings that cannot be used; a trainer's config adds its own."""
        return [*at_least(self, 1, "epochs", "batch_size", "max_length"),
                *at_least(self, 0, "max_steps", "weight_decay", "max_grad_norm", "eval_every", "save_every"),
                *positive(self, "lr"), *within(self, "min_lr_ratio", 0, 1), *within(self, "warmup_ratio", 0, 1),
                *within(self, "eval_fraction", 0, 1, open_high=True), *adam_betas_problems(self)]

@dataclass
class PairDataConfig(FixedDataConfig):
    """FixedDataConfig for preference pairs (DPO, reward model)."""

    data: str = doc("", "JSONL of {prompt, chosen, rejected} rows, or the name of an earlier stage that wrote one.")
    batch_size: int = doc(32, "Pairs per optimizer step.")
    micro_batch_size: int = doc(8, "Pairs per forward/backward (two sequences each); gradients accumulate (0: all).")

    def problems(self) -> list[Problem]:
        return [*super().problems(), *at_least(self, 0, "micro_batch_size", why=" (0: all pairs at once)")]

@dataclass
class SFTConfig(FixedDataConfig):
    kind: str = doc("sft", "Stage kind: supervised fine-tuning (cold start, rejection-sampling SFT, distillation).")
    data: str = doc("", "JSONL of {prompt, completion} rows ({messages} rows with template.kind: chat), or the name "
                        "of an earlier stage whose output is such a file.")
    epochs: int = doc(2, "Passes over the training examples (R1: 2–3).")
    micro_batch_tokens: int = doc(8192, "Padded tokens per forward/backward: a step's examples are sorted by length "
                                        "and grouped greedily under this budget (0: the whole step at once).")
    lr: float = doc(5e-5, "Peak learning rate (AdamW); R1 SFT 5e-5, distillation 1e-4.")

    def __post_init__(self):
        self.check()

    def problems(self) -> list[Problem]:
        found = super().problems()
        if self.micro_batch_tokens < 0 or (self.micro_batch_tokens and self.micro_batch_tokens < self.max_length):
            found.append(Problem("micro_batch_tokens", self.micro_batch_tokens, f"must be 0 (the whole step at once) "
                                 f"or at least max_length ({self.max_length}) so that the longest example fits in "
                                 f"one micro-batch"))
        return found

@dataclass
class DPOConfig(PairDataConfig):
    kind: str = doc("dpo", "Stage kind: DPO on preference pairs (offline baseline to GRPO).")
    init: str = doc("", "Checkpoint to start from (also the frozen reference): an earlier stage's name, a path or "
                        "hub id (empty: previous stage).")
    beta: float = doc(0.1, "β: strength of the implicit KL to the reference (DPO paper: 0.1).")
    lr: float = doc(1e-6, "Peak learning rate (AdamW); the DPO paper uses 1e-6 (tiny models need ~1e-4).")
    warmup_ratio: float = doc(0.1, "Share of the optimizer steps spent in linear warmup.")

    def __post_init__(self):
        self.check()

    def problems(self) -> list[Problem]:
        return [*super().problems(), *positive(self, "beta")]

@dataclass
class RewardModelConfig(PairDataConfig):
    kind: str = doc("reward_model", "Stage kind: train a Bradley–Terry reward model on preference pairs.")
    init: str = doc("", "Backbone to start from: an earlier stage's name, a path or hub id (empty: previous stage); "
                        "the policy passes through the stage unchanged.")
    epochs: int = doc(1, "Passes over the training pairs (InstructGPT: 1; more overfits).")
    lr: float = doc(1e-5, "Peak learning rate (AdamW) of backbone and head (InstructGPT RM: 9e-6).")
    eval: bool = doc(False, "Run the task evaluation after the stage (of the policy, which this stage leaves as is).")

    def __post_init__(self):
        self.check()

# --- data stages: sampling a model to write a data set ----------------------------------------------------------

@dataclass
class DataSamplingConfig:
    """What the stages that sample a model to write a data set share (rejection sampling, cold start, preference
    pairs): the model, how many prompts and samples, how to sample, the output file."""

    init: str = doc("", "Model to sample from: an earlier stage's name, a path or hub id (empty: the previous model).")
    num_prompts: int = doc(256, "Training prompts to sample for.")
    samples_per_prompt: int = doc(4, "Completions per prompt (R1: several per prompt).")
    temperature: float = doc(0.7, "Sampling temperature.")
    top_p: float = doc(0.95, "Nucleus sampling.")
    max_new_tokens: int = doc(64, "Longest completion.")
    output: str = doc("data.jsonl", "File name of the data set inside the stage folder.")
    eval: bool = doc(False, "The output is a data file, not a model: nothing to evaluate.")

    def check(self) -> None:
        """Raise ``ConfigProblems`` with every problem of ``problems()`` (each data stage's ``__post_init__`` calls
        it)."""
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        """The shared settings that cannot be used; a data stage's config adds its own."""
        found = [*at_least(self, 0, "num_prompts"), *at_least(self, 1, "samples_per_prompt", "max_new_tokens"),
                 *at_least(self, 0, "temperature", why=" (0: greedy)"), *within(self, "top_p", 0, 1, open_low=True)]
        if not self.output or self.output in (".", "..") or "/" in self.output or "\\" in self.output:
            found.append(Problem("output", self.output, "must be a plain file name: the data set is written inside "
                                                        "the stage folder"))
        return found

@dataclass
class ReadabilityFilters:
    language: str = doc("en", "Target language of the chain of thought (see r1lab.rewards.language).")
    min_language_share: float = doc(0.95, "Drop a completion whose share of target-language thinking words is "
                                          "below this (0: keep mixed languages).")
    max_paragraph_words: int = doc(300, "Drop a completion with a paragraph longer than this many words (0: off).")
    drop_code_blocks: bool = doc(True, "Drop completions containing a ``` code fence.")
    deduplicate: bool = doc(True, "Drop repeated (prompt, completion) pairs after whitespace/case normalisation.")

@dataclass
class RejectionSamplingConfig(DataSamplingConfig):
    kind: str = doc("rejection_sampling", "Stage kind: sample from a checkpoint, keep correct readable completions.")
    filters: ReadabilityFilters = doc(ReadabilityFilters(), "Readability filters and deduplication.")
    add_domain_examples: int = doc(0, "Non-reasoning rows (writing/formatting tasks) added to the data set.")

    def __post_init__(self):
        self.check()

    def problems(self) -> list[Problem]:
        return [*super().problems(), *at_least(self, 1, "num_prompts"), *at_least(self, 0, "add_domain_examples")]

@dataclass
class ColdStartConfig(DataSamplingConfig):
    kind: str = doc("cold_start", "Stage kind: build cold-start SFT data (rewritten R1-Zero outputs, few-shot CoT).")
    init: str = doc("", "Checkpoint whose outputs are rewritten (R1-Zero): an earlier stage's name, a path or hub id "
                        "(empty: previous stage).")
    num_prompts: int = doc(128, "Training prompts sampled from the init checkpoint (0: none).")
    few_shot_from: str = doc("", "Model prompted few-shot for long chain of thought (a stage name, 'model', a path; "
                                 "empty: no few-shot rows).")
    few_shot_prompts: int = doc(0, "Training prompts for few-shot generation.")
    few_shot_samples: int = doc(2, "Completions per few-shot prompt.")
    few_shot_k: int = doc(2, "Worked examples in each few-shot prompt.")
    few_shot_style: str = doc("worked_words", "The task's corpus style the few-shot examples are written in.")
    written_rows: int = doc(0, "Rows written by the task's generator in few_shot_style (R1's human-written examples).")
    written_data: str = doc("", "JSONL of {prompt, completion} rows written by people, added as they are (empty: "
                                "none).")
    filters: ReadabilityFilters = doc(ReadabilityFilters(), "Readability filters and deduplication.")

    def __post_init__(self):
        self.check()

    def problems(self) -> list[Problem]:
        found = [*super().problems(), *at_least(self, 0, "few_shot_prompts", "written_rows", "few_shot_k"),
                 *at_least(self, 1, "few_shot_samples")]
        if self.few_shot_prompts and not self.few_shot_from:
            found.append(Problem("few_shot_from", self.few_shot_from, f"few_shot_prompts ({self.few_shot_prompts}) "
                                 f"needs few_shot_from: the model to prompt (e.g. the base stage)"))
        return found

@dataclass
class PreferencePairsConfig(DataSamplingConfig):
    kind: str = doc("preference_pairs", "Stage kind: write preference pairs (sampled correct vs incorrect, and "
                                        "synthetic domain pairs).")
    num_prompts: int = doc(256, "Training prompts to sample for (0: no sampled pairs).")
    temperature: float = doc(1.0, "Sampling temperature (1.0 gives both correct and incorrect samples).")
    top_p: float = doc(1.0, "Nucleus sampling.")
    pairs_per_prompt: int = doc(1, "Pairs at most per prompt (each completion in one pair at most).")
    domain_pairs: int = doc(0, "Synthetic pairs on non-reasoning domain prompts (reference vs a wrong answer).")
    output: str = doc("pairs.jsonl", "File name of the pairs inside the stage folder.")

    def __post_init__(self):
        self.check()

    def problems(self) -> list[Problem]:
        found = [*super().problems(), *at_least(self, 0, "domain_pairs"),
                 *at_least(self, 2, "samples_per_prompt", why=": a pair needs two completions of a prompt"),
                 *at_least(self, 1, "pairs_per_prompt")]
        if self.num_prompts and self.temperature <= 0:  # greedy samples of a prompt are all the same: no pair
            found.append(Problem("temperature", self.temperature, "must be > 0: greedy completions of a prompt are "
                                                                  "identical, so none is preferred to another"))
        if not self.num_prompts and not self.domain_pairs:
            found.append(Problem("num_prompts", self.num_prompts, "set num_prompts or domain_pairs: this stage would "
                                                                  "write no pair"))
        return found

@dataclass
class CheckGateConfig:
    kind: str = doc("check_gate", "Stage kind: measure whether the model's self-checks are reliable before RL.")
    init: str = doc("", "The model to measure: an earlier stage's name, a path or hub id (empty: previous model).")
    num_problems: int = doc(200, "Held-out problems sampled.")
    k: int = doc(4, "Completions per problem.")
    temperature: float = doc(1.0, "Sampling temperature (1.0: what GRPO's rollouts see).")
    top_p: float = doc(1.0, "Nucleus sampling.")
    max_new_tokens: int = doc(128, "Longest completion.")
    min_ok_precision: float = doc(0.5, "Fail when fewer of the 'ok' marks than this are on real hits.")
    min_no_precision: float = doc(0.5, "Fail when fewer of the 'no' marks than this are on real misses.")
    on_fail: Literal["warn", "stop"] = doc("warn", "warn: log and go on; stop: end the run with an error.")
    eval: bool = doc(False, "Also run the task evaluation (the model is unchanged; its row is the previous one's).")

    def __post_init__(self):
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        return [*at_least(self, 1, "num_problems", "k", "max_new_tokens"),
                *at_least(self, 0, "temperature", why=" (0: greedy)"), *within(self, "top_p", 0, 1, open_low=True),
                *within(self, "min_ok_precision", 0, 1), *within(self, "min_no_precision", 0, 1)]

# --- the embedded tiny base model ------------------------------------------------------------------------------

@dataclass
class PretrainConfig:
    kind: str = doc("pretrain", "Stage kind: build the embedded tiny base model from scratch.")
    hidden_size: int = doc(128, "Transformer width.")
    num_layers: int = doc(4, "Transformer layers.")
    num_heads: int = doc(4, "Attention heads (key/value heads equal).")
    intermediate_size: int = doc(512, "MLP width.")
    styles: dict[str, float] = doc({}, "Corpus mixture: task corpus style -> weight (empty: the task's default).")
    corpus_problems: int = doc(20000, "Distinct training problems the corpus is written about.")
    steps: int = doc(1500, "Optimizer steps.")
    batch_size: int = doc(32, "Sequences per step.")
    block_size: int = doc(256, "Tokens per packed training sequence.")
    lr: float = doc(3e-3, "Peak learning rate (AdamW), cosine decay to 10% after warmup.")
    warmup_steps: int = doc(50, "Linear warmup steps.")
    weight_decay: float = doc(0.01, "AdamW weight decay.")
    adam_betas: list[float] = doc([0.9, 0.95], "AdamW β1, β2 (0.95: the usual choice for pretraining).")
    cache: bool = doc(True, "Reuse a base model already built with the same settings (in cache_dir).")
    cache_dir: str = doc("", "Where built base models are kept (empty: $R1LAB_CACHE or ~/.cache/r1lab).")
    eval: bool = doc(True, "Evaluate the base model on the held-out split after building it.")

    def __post_init__(self):
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        found = [*at_least(self, 1, "hidden_size", "num_layers", "num_heads", "intermediate_size", "corpus_problems",
                           "steps", "batch_size"),
                 *at_least(self, 2, "block_size", why=": a token and the next one it predicts"),
                 *at_least(self, 0, "warmup_steps", "weight_decay"), *positive(self, "lr"), *adam_betas_problems(self)]
        if self.num_heads >= 1 and self.hidden_size % self.num_heads:
            found.append(Problem("num_heads", self.num_heads, f"must divide hidden_size ({self.hidden_size})"))
        if any(weight < 0 for weight in self.styles.values()) or (self.styles and not sum(self.styles.values()) > 0):
            found.append(Problem("styles", self.styles, "weights must be >= 0 with at least one > 0"))
        return found


# kind -> its config class, in the order `r1lab run --help-config` lists them
STAGE_KINDS: dict[str, type] = {
    "pretrain": PretrainConfig,
    "grpo": GRPOConfig,
    "ppo": PPOConfig,
    "sft": SFTConfig,
    "reward_model": RewardModelConfig,
    "dpo": DPOConfig,
    "rejection_sampling": RejectionSamplingConfig,
    "cold_start": ColdStartConfig,
    "preference_pairs": PreferencePairsConfig,
    "check_gate": CheckGateConfig,
}
