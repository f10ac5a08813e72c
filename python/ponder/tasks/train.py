"""Train the bundled Countdown policy + value model on solver-generated traces.

``train_countdown(out_dir)`` builds a small Llama-family :class:`~ponder.models.DecoderLM`
with a value head, trains it with AdamW (linear warm-up, cosine decay) on the joint loss
``policy CE on step lines + value_weight * balanced value BCE`` and writes
``model.safetensors`` + ``config.json`` (:func:`ponder.models.save_hf`) and ``tokenizer.json``
(:class:`CharTokenizer`) into ``out_dir``. :func:`load_countdown` reads them back.

The custom ops have no autograd, so training runs ``DecoderLM.forward_dense``: the decoder
without a KV cache on a padded ``[B, T]`` batch (tests check it matches the paged forward).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ponder.models import DecoderLM, ModelConfig, load_hf, save_hf
from ponder.ops import reference
from ponder.tasks import evaluation
from ponder.tasks.paths import ensure_writable_dir
from ponder.tasks.tokenizer import CharTokenizer
from ponder.tasks.traces import IGNORE_INDEX, TraceSampler

logger = logging.getLogger(__name__)
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.json"
# Batches drawn together and grouped by length (see TraceSampler.batches).
_LENGTH_GROUP = 8


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Model size, optimisation and data knobs. ``TrainConfig()`` is the shipped model;
    :data:`QUICK` trains a toy model in seconds (for tests)."""

    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 384
    max_position: int = 256
    # 11000 steps of 32 sequences: about 32 minutes on one CPU core (0.17 s/step).
    steps: int = 11000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    value_weight: float = 1.0
    value_fraction: float = 0.5
    # Searches decode under the legal-step constraint, so the policy need not learn legality
    # from random traces' step choices (prior_weight > 0 did, at the cost of their noise).
    prior_weight: float = 0.0
    # 3 to 5 numbers: the 4-number problems the demo runs get a third of the data; 6-number
    # problems are out of the training distribution (their curve is reported, not trained for).
    num_numbers: Tuple[int, int] = (3, 5)
    # Digits 1-9 and two-digit targets: every given number is one character to copy and the
    # arithmetic tables stay small, which a model trained for minutes on a CPU needs.
    min_value: int = 1
    max_value: int = 9
    min_target: int = 10
    max_target: int = 99
    eval_problems: int = 200
    eval_value_examples: int = 400

    def model_config(self, tokenizer: CharTokenizer) -> ModelConfig:
        return ModelConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=self.num_layers, num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads, head_dim=self.hidden_size // self.num_heads,
            max_position_embeddings=self.max_position, tie_word_embeddings=True,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)


QUICK = TrainConfig(hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64,
                    steps=30, batch_size=8, warmup_steps=5, lr=3e-3, num_numbers=(3, 4),
                    eval_problems=8, eval_value_examples=16)


def dense_logits(model: DecoderLM, hidden: torch.Tensor) -> torch.Tensor:
    """hidden ``[..., C]`` -> fp32 logits ``[..., V]`` (differentiable ``DecoderLM.logits``)."""
    weight = model.embed if model.lm_head is None else model.lm_head
    return F.linear(hidden, weight).float()


def dense_value_score(model: DecoderLM, hidden: torch.Tensor) -> torch.Tensor:
    """hidden ``[M, C]`` -> value-head pre-sigmoid scores ``[M]`` fp32 (``DecoderLM.value`` is
    their sigmoid)."""
    head = model.value_head
    normed = reference.rms_norm(hidden, head.norm_weight.to(hidden.dtype), head.eps)  # [M, C]
    return normed.float() @ head.weight.float() + head.bias.float()  # [M]


def joint_loss(model: DecoderLM, batch: Dict[str, torch.Tensor],
               value_weight: float) -> Tuple[torch.Tensor, Dict[str, float]]:
    """``weighted token CE + value_weight * weighted value BCE`` on a
    :func:`~ponder.tasks.traces.collate` batch (token weights from ``target_weights``)."""
    hidden = model.forward_dense(batch["input_ids"])  # [B, T, C]
    B, T, C = hidden.shape
    logits = dense_logits(model, hidden)  # [B, T, V]
    token_loss = F.cross_entropy(logits.view(B * T, -1), batch["targets"].view(B * T), ignore_index=IGNORE_INDEX,
                                 reduction="none")  # [B*T], 0 where ignored
    weights = batch["target_weights"].view(B * T)
    policy = (token_loss * weights).sum() / weights.sum().clamp_min(1e-6)
    scores = dense_value_score(model, hidden.reshape(B * T, C)[batch["value_index"]])  # [M]
    value = (F.binary_cross_entropy_with_logits(scores, batch["value_labels"], reduction="none")
             * batch["value_weights"]).sum()
    loss = policy + value_weight * value
    return loss, {"loss": loss.item(), "policy_loss": policy.item(), "value_loss": value.item()}


def _lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: DecoderLM, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW over the model; norm weights and biases (1-D) are not decayed: shrinking them
    towards 0 only fights the normalisation."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    plain = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": plain, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))


def train_step(model: DecoderLM, optimizer: torch.optim.Optimizer, batch: Dict[str, torch.Tensor], lr: float,
               value_weight: float, grad_clip: float) -> Dict[str, float]:
    """One optimiser step on :func:`joint_loss` at learning rate ``lr`` (gradients clipped to
    ``grad_clip``); returns the loss parts."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss, parts = joint_loss(model, batch, value_weight)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return parts


def _check_args(out_dir, steps, seed, batch_size) -> None:
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f"out_dir must be a path, got {type(out_dir).__name__}")
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")


def train_countdown(out_dir: str | os.PathLike, steps: Optional[int] = None, seed: int = 0,
                    batch_size: Optional[int] = None, *, quick: bool = False, config: Optional[TrainConfig] = None,
                    progress: bool = True, evaluate: bool = True,
                    num_threads: Optional[int] = 1) -> Dict[str, Any]:
    """Train the Countdown model and save it into ``out_dir``; returns the metrics.

    ``config`` (default ``TrainConfig()``, or :data:`QUICK` with ``quick=True``) sets every
    knob; ``steps`` / ``batch_size`` override it. The same ``seed`` (and thread count) gives the
    same weights. ``evaluate`` adds greedy solve rates on ``config.eval_problems`` held-out
    4-number problems per rule and value-head accuracy on held-out states (those problems are
    never trained on). Metrics are also written to ``metrics.json``. ``num_threads`` sets
    torch's intra-op threads for the run (None: leave them). The default is 1: the ops of a
    model this small are too short to split, and on the project's 2-vCPU machine a second
    OpenMP thread spinning against other work made a step 15x slower (4.6 s vs 0.3 s,
    batch 32); ``OMP_WAIT_POLICY=PASSIVE`` removes the slowdown but not the lack of gain.
    """
    _check_args(out_dir, steps, seed, batch_size)
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise ValueError(f"num_threads must be None or a positive int, got {num_threads!r}")
    ensure_writable_dir(out_dir, "out_dir")  # now, not after the run: saving is its last step
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(out_dir, steps, seed, batch_size, quick, config, progress, evaluate)
    finally:
        torch.set_num_threads(previous_threads)


def _train(out_dir, steps, seed, batch_size, quick, config, progress, evaluate) -> Dict[str, Any]:
    cfg = config if config is not None else (QUICK if quick else TrainConfig())
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(cfg).__name__}")
    cfg = dataclasses.replace(cfg, steps=steps or cfg.steps, batch_size=batch_size or cfg.batch_size)
    tokenizer = CharTokenizer()
    torch.manual_seed(seed)
    model = DecoderLM(cfg.model_config(tokenizer), value_head=True, init_std=0.02)
    model.init_weights(0.02, generator=torch.Generator().manual_seed(seed))
    knobs = dict(num_numbers=cfg.num_numbers, min_value=cfg.min_value, max_value=cfg.max_value,
                 min_target=cfg.min_target, max_target=cfg.max_target)
    held_out = evaluation.HeldOut.build(tokenizer, seed, cfg.eval_problems if evaluate else 0,
                                        cfg.eval_value_examples if evaluate else 0, knobs, cfg.max_position)
    sampler = TraceSampler(tokenizer, seed, value_fraction=cfg.value_fraction, max_len=cfg.max_position,
                           holdout=held_out.keys, prior_weight=cfg.prior_weight, **knobs)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    history = []
    queue: list = []
    data_seconds = 0.0
    start = time.perf_counter()
    bar = _progress(cfg.steps, progress)
    model.train()
    for step in range(cfg.steps):
        if not queue:
            tic = time.perf_counter()
            queue = sampler.batches(cfg.batch_size, _LENGTH_GROUP)
            data_seconds += time.perf_counter() - tic
        parts = train_step(model, optimizer, queue.pop(), _lr_at(step, cfg), cfg.value_weight, cfg.grad_clip)
        history.append(parts)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", pol=f"{parts['policy_loss']:.3f}",
                            val=f"{parts['value_loss']:.3f}")
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    model.eval()
    tail = history[-max(1, len(history) // 10):]
    metrics: Dict[str, Any] = {
        "steps": cfg.steps, "batch_size": cfg.batch_size, "seed": seed, "seconds": seconds,
        "seconds_per_step": seconds / cfg.steps, "data_seconds_per_step": data_seconds / cfg.steps,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "first_loss": history[0]["loss"],
        **{f"final_{k}": sum(h[k] for h in tail) / len(tail) for k in ("loss", "policy_loss", "value_loss")},
        "loss_history": [h["loss"] for h in history],
        "config": dataclasses.asdict(cfg),
    }
    if evaluate:
        metrics["eval"] = held_out.evaluate(model, tokenizer)
    save_countdown(model, tokenizer, out_dir)
    with open(os.path.join(os.fspath(out_dir), METRICS_FILE), "w") as f:
        json.dump(metrics, f, indent=2)
    return metrics


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="train countdown", unit="step")


def save_countdown(model: DecoderLM, tokenizer: CharTokenizer, out_dir: str | os.PathLike) -> None:
    """Write ``config.json`` + ``model.safetensors`` (value head included) + ``tokenizer.json``."""
    save_hf(model, out_dir)
    tokenizer.save(os.path.join(os.fspath(out_dir), TOKENIZER_FILE))


def load_countdown(path: str | os.PathLike, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> Tuple[DecoderLM, CharTokenizer]:
    """(model with value head, tokenizer) from a directory written by :func:`train_countdown`."""
    path = os.fspath(path)
    tok_path = os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(tok_path):
        raise FileNotFoundError(f"no {TOKENIZER_FILE} in {path!r}: not a Countdown model directory")
    model = load_hf(path, dtype=dtype, device=device)
    if model.value_head is None:
        raise ValueError(f"the checkpoint in {path!r} has no value head")
    return model, CharTokenizer.load(tok_path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Train the bundled Countdown policy + value model.")
    parser.add_argument("out_dir")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="toy model, seconds (for tests)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    metrics = train_countdown(args.out_dir, args.steps, args.seed, args.batch_size, quick=args.quick,
                              progress=not args.no_progress, evaluate=not args.no_eval, num_threads=args.threads)
    summary = {k: v for k, v in metrics.items() if k not in ("loss_history", "config")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
