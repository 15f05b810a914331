"""The run-wide settings of a recipe (everything but its stages): the model, the task, the template, evaluation."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from r1lab.config import Problem, at_least, doc, raise_problems, within
from r1lab.tasks import TaskConfig
from r1lab.templates import TemplateConfig
from r1lab.trackers import TRACKERS, missing_tracker_packages


@dataclass
class EvalConfig:
    num_problems: int = doc(200, "Held-out problems per evaluation.")
    k: int = doc(4, "Samples per problem: pass@1 is their mean correctness, cons@k their majority vote.")
    temperature: float = doc(0.6, "Sampling temperature (R1 protocol: 0.6).")
    top_p: float = doc(0.95, "Nucleus sampling (R1 protocol: 0.95).")
    max_new_tokens: int = doc(64, "Longest completion during evaluation.")
    seed: int = doc(1234, "Seed of the evaluation sampler and problem draw.")
    quick_problems: int = doc(100, "Problems in the quick evaluations during training.")
    quick_k: int = doc(2, "Samples per problem in the quick evaluations during training.")

    def __post_init__(self):
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        return [*at_least(self, 1, "num_problems", "k", "max_new_tokens", "quick_problems", "quick_k"),
                *at_least(self, 0, "temperature", why=" (0: greedy)"), *within(self, "top_p", 0, 1, open_low=True)]


DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    enabled: bool = doc(False, "Train LoRA adapters (peft) instead of every weight; reference = adapters off.")
    r: int = doc(16, "Adapter rank.")
    alpha: int = doc(32, "LoRA alpha: the adapter's update is scaled by alpha / r.")
    dropout: float = doc(0.0, "Dropout on the adapter input (0 keeps sampling and training policies identical).")
    target_modules: list[str] = doc(list(DEFAULT_TARGETS),
                                    "Layers that get adapters (Qwen2 / Llama names); ['all-linear']: every linear "
                                    "layer but the LM head.")
    load_in_4bit: bool = doc(False, "QLoRA: hold the frozen base in 4-bit NF4 (needs bitsandbytes and a CUDA GPU).")


# The names r1lab.models.resolve_dtype and r1lab.engine.make_engine accept (tests/test_recipe_checks.py holds them to
# it), here so that a recipe is checked before torch is needed.
DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
ENGINES = ("auto", "fast", "transformers", "hf")
PRECISIONS = ("full", "bf16-mixed")
PARALLEL = ("ddp", "fsdp2")
DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class RunConfig:
    name: str = doc("run", "Run name: results go to <output_dir>/<name>/.")
    output_dir: str = doc("runs", "Folder that holds run folders.")
    seed: int = doc(0, "Seed for everything the run samples.")
    model: str = doc("tiny", "Starting model: 'tiny' (built by a pretrain stage), a local path or a hub id.")
    dtype: str = doc("float32", "Model dtype: float32, bfloat16, float16.")
    device: str = doc("auto", "auto (cuda when present), cpu, cuda, cuda:1 ...")
    threads: int = doc(0, "CPU threads for torch (0: torch's default); recipes run side by side get a share of the "
                          "cores instead (r1lab.side_by_side).")
    engine: str = doc("auto", "Generation engine: auto (r1lab's own for Llama/Qwen/Mistral-family models, "
                              "transformers' generate for the rest), fast (r1lab's own only), transformers.")
    report_to: list[str] = doc([], "Experiment trackers that get every stage's metrics, the held-out evaluations, "
                                   "the resolved recipe and sample completions, any of: tensorboard (in "
                                   "<run>/tensorboard), wandb (online when logged in; WANDB_MODE=offline writes "
                                   "<run>/wandb), trackio (its local store); each needs its extra, e.g. pip install "
                                   "'r1lab[wandb]'. README, 'Experiment trackers'.")
    tracker_project: str = doc("r1lab", "The wandb / trackio project the run is filed under (the run keeps its name).")
    keep_checkpoints: bool = doc(False, "Keep a finished stage's resumable checkpoint (<stage>/checkpoint: weights "
                                        "plus optimizer state, about 3x the model) instead of deleting it once the "
                                        "stage is done; its final model is kept either way.")
    precision: str = doc("full", "full: compute in `dtype`; bf16-mixed: fp32 weights and AdamW state, forward and "
                                 "backward in bf16 (autocast), sampling with a bf16 copy of the weights. For GPUs: "
                                 "on a CPU without native bf16 it is many times slower than fp32.")
    parallel: str = doc("ddp", "How several processes (torchrun) share the training: ddp (every rank holds the whole "
                               "model; gradients summed over ranks before each optimizer step) or fsdp2 (weights, "
                               "gradients and AdamW state sharded per decoder layer, with a full copy for sampling). "
                               "README, 'Many processes'.")
    gradient_checkpointing: bool = doc(False, "Recompute activations in backward (less memory, ~15% slower).")
    lora: LoraConfig = doc(LoraConfig(), "LoRA / QLoRA adapters (peft) for the RL stages; reference = adapters off.")
    task: TaskConfig = doc(TaskConfig(), "The task: prompts, answers and the verifier.")
    template: TemplateConfig = doc(TemplateConfig(), "How prompts are shown to the model.")
    eval: EvalConfig = doc(EvalConfig(), "Held-out evaluation after every stage (R1 protocol).")
    stages: dict[str, dict] = doc({}, "Ordered stages: name -> {kind: pretrain|grpo|ppo, ...settings of that kind}.")

    def __post_init__(self):
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        found = at_least(self, 0, "threads", why=" (0: torch's default)")
        if not self.name or self.name in (".", "..") or "/" in self.name or os.sep in self.name or "\\" in self.name:
            found.append(Problem("name", self.name, "must be a plain folder name inside output_dir (no '/', no '..', "
                                                    "not empty): the run writes <output_dir>/<name>/"))
        if self.dtype not in DTYPES:
            found.append(Problem("dtype", self.dtype, f"must be one of {', '.join(DTYPES)}"))
        if not DEVICE.match(self.device):
            found.append(Problem("device", self.device, "must be auto, cpu, cuda, cuda:N (N a GPU number) or mps"))
        if self.precision not in PRECISIONS:
            found.append(Problem("precision", self.precision, f"must be one of {', '.join(PRECISIONS)}"))
        elif self.precision == "bf16-mixed" and self.dtype not in ("float32", "fp32"):
            found.append(Problem("precision", self.precision, f"bf16-mixed keeps fp32 master weights: set dtype: "
                                                              f"float32 (it is {self.dtype})"))
        if self.parallel not in PARALLEL:
            found.append(Problem("parallel", self.parallel, f"must be one of {', '.join(PARALLEL)}"))
        elif self.parallel == "fsdp2" and self.lora.enabled:
            found.append(Problem("parallel", self.parallel, "LoRA adapters are not sharded yet: use parallel: ddp "
                                                            "with lora (the frozen base is then held once per rank)"))
        for name in self.report_to:
            if name not in TRACKERS:
                found.append(Problem("report_to", self.report_to, f"{name!r} is not a tracker r1lab reports to; "
                                                                  f"supported: {', '.join(TRACKERS)}"))
        for name in missing_tracker_packages(self.report_to):
            found.append(Problem("report_to", self.report_to, f"{name} is not installed: pip install "
                                                              f"'r1lab[{name}]'"))
        if not self.tracker_project.strip():
            found.append(Problem("tracker_project", self.tracker_project, "must name a project"))
        if self.engine not in ENGINES:
            found.append(Problem("engine", self.engine, f"must be one of {', '.join(ENGINES)}"))
        return found
