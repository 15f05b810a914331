"""The run-wide settings of a recipe (everything but its stages): the model, the task, the template, evaluation."""

from __future__ import annotations

from dataclasses import dataclass

from r1lab.config import doc
from r1lab.lora import LoraConfig
from r1lab.tasks import TaskConfig
from r1lab.templates import TemplateConfig


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
    engine: str = doc("transformers", "Generation engine.")
    gradient_checkpointing: bool = doc(False, "Recompute activations in backward (less memory, ~15% slower).")
    lora: LoraConfig = doc(LoraConfig(), "LoRA / QLoRA adapters (peft) for the RL stages; reference = adapters off.")
    task: TaskConfig = doc(TaskConfig(), "The task: prompts, answers and the verifier.")
    template: TemplateConfig = doc(TemplateConfig(), "How prompts are shown to the model.")
    eval: EvalConfig = doc(EvalConfig(), "Held-out evaluation after every stage (R1 protocol).")
    stages: dict[str, dict] = doc({}, "Ordered stages: name -> {kind: pretrain|grpo|ppo, ...settings of that kind}.")
