"""Quick checks of a trained Countdown model without the search layer.

:func:`greedy_decode` writes one completion per problem through the engine's decode loop
(``Engine.prefill`` / ``Engine.decode``, the inference path of every search);
:func:`value_accuracy` reads the value head at the labelled newlines of trace examples with the
model's cache-free ``forward_dense``.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Dict, List, Optional, Sequence, Set

import torch

from ponder.engine import Engine
from ponder.models import DecoderLM
from ponder.tasks import countdown
from ponder.tasks.tokenizer import CharTokenizer
from ponder.tasks.traces import KINDS, Example, make_example

_PAGE_SIZE = 16


@torch.inference_mode()
def greedy_decode(model: DecoderLM, tokenizer: CharTokenizer, problems: Sequence[countdown.Problem],
                  max_new_tokens: Optional[int] = None) -> List[str]:
    """Greedy completion (text after the prompt) of every problem, batched.

    A row stops at ``<eos>``, after ``max_new_tokens`` (default: 24 per step a solution of the
    largest problem may take, ample for step lines), at the position limit, or at a newline
    after which :func:`~ponder.tasks.countdown.is_terminal` holds (solved, illegal line, or
    no numbers left to combine).
    """
    if not problems:
        return []
    if max_new_tokens is None:
        max_new_tokens = 24 * (max(len(p.numbers) for p in problems) - 1)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    prompts = [tokenizer.encode(p.prompt(), add_bos=True) for p in problems]
    limit = model.config.max_position_embeddings
    capacity = min(limit, max(map(len, prompts)) + max_new_tokens)
    pages_per_row = -(-capacity // _PAGE_SIZE)
    engine = Engine(model, tokenizer, num_pages=len(problems) * pages_per_row, page_size=_PAGE_SIZE,
                    prefix_cache=False)
    all_seqs = engine.prefill(prompts).tolist()
    seqs = list(all_seqs)
    rows = list(range(len(problems)))
    texts = [""] * len(problems)
    logits = model.logits(engine.hidden(seqs))
    generated = 0
    try:
        while rows:
            next_ids = logits.argmax(-1).tolist()
            keep = []
            for row, seq, tok in zip(rows, seqs, next_ids):
                if tok == tokenizer.eos_token_id:
                    continue
                texts[row] += tokenizer.decode([tok])
                ended = engine.num_tokens(seq) + 1 > capacity
                if texts[row].endswith("\n"):
                    lines = texts[row].split("\n")[:-1]
                    ended = ended or countdown.is_terminal(problems[row], lines)
                if not ended:
                    keep.append((row, seq, tok))
            generated += 1
            if not keep or generated >= max_new_tokens:
                break
            rows, seqs, toks = (list(x) for x in zip(*keep))
            logits = model.logits(engine.decode(seqs, toks))
    finally:
        engine.free(all_seqs)
    return texts


def solve_rate(model: DecoderLM, tokenizer: CharTokenizer, problems: Sequence[countdown.Problem]) -> float:
    """Fraction of ``problems`` whose greedy completion passes :func:`~ponder.tasks.countdown.check`."""
    texts = greedy_decode(model, tokenizer, problems)
    return sum(countdown.check(p, t).ok for p, t in zip(problems, texts)) / max(1, len(problems))


@torch.inference_mode()
def value_accuracy(model: DecoderLM, examples: Sequence[Example], batch_size: int = 64) -> Dict[str, float]:
    """Accuracy of ``value > 0.5`` against the solver labels at every labelled newline.

    Returns ``accuracy``, ``balanced_accuracy`` (mean of the positive and negative recall),
    ``num_states`` and ``positive_fraction``.
    """
    scores, labels = [], []
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        T = max(len(ex.ids) for ex in chunk)
        ids = torch.zeros(len(chunk), T, dtype=torch.int64, device=model.device)  # right padding
        for b, ex in enumerate(chunk):
            ids[b, : len(ex.ids)] = torch.as_tensor(list(ex.ids), dtype=torch.int64)
        hidden = model.forward_dense(ids)  # [B, T, C]
        rows = torch.tensor([(b, p) for b, ex in enumerate(chunk) for p in ex.value_positions], dtype=torch.int64)
        if rows.numel():
            scores.append(model.value(hidden[rows[:, 0], rows[:, 1]]))
        labels += [lab for ex in chunk for lab in ex.value_labels]
    if not labels:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "num_states": 0,
                "positive_fraction": float("nan")}
    pred = torch.cat(scores) > 0.5
    truth = torch.tensor(labels) > 0.5
    recalls = [float((pred[truth == t] == t).float().mean()) for t in (True, False) if bool((truth == t).any())]
    return {"accuracy": float((pred == truth).float().mean()), "balanced_accuracy": sum(recalls) / len(recalls),
            "num_states": len(labels), "positive_fraction": float(truth.float().mean())}


@dataclasses.dataclass
class HeldOut:
    """Problems and value examples kept out of training: greedy problems (4 numbers, per rule)
    and value-labelled traces of every kind from the training distribution."""

    problems: Dict[str, List[countdown.Problem]]
    value_examples: List[Example]
    keys: Set[tuple]

    @classmethod
    def build(cls, tokenizer: CharTokenizer, seed: int, num_problems: int, num_value_examples: int,
              knobs: dict, max_len: int) -> "HeldOut":
        problems = {}
        for rule in (False, True):
            only4 = dict(knobs, num_numbers=4)
            problems[countdown.RULE_NAMES[rule]] = countdown.generate(
                num_problems, seed + 7919 * (2 + rule), all_numbers=rule, **only4)
        rng = random.Random(seed + 104729)
        examples = []
        for i in range(num_value_examples):
            (p,) = countdown.generate(1, rng.getrandbits(62), all_numbers=bool(i % 2), **knobs)
            ex = make_example(p, KINDS[i % 3], rng, tokenizer)
            if len(ex.ids) <= max_len:
                examples.append((p, ex))
        keys = {p.key() for ps in problems.values() for p in ps} | {p.key() for p, _ in examples}
        return cls(problems, [ex for _, ex in examples], keys)

    def evaluate(self, model: DecoderLM, tokenizer: CharTokenizer) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for rule, problems in self.problems.items():
            if problems:
                out[f"greedy_solve_rate_{rule}"] = solve_rate(model, tokenizer, problems)
                out[f"num_problems_{rule}"] = len(problems)
        if self.value_examples:
            out.update({f"value_{k}": v for k, v in value_accuracy(model, self.value_examples).items()})
        return out
