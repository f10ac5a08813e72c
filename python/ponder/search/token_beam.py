"""Classic token-level beam search on the engine's paged KV cache, step for step what
``transformers`` does.

``token_beam_search(engine, prompts, config)`` returns, for every prompt, exactly what
``model.generate(input_ids, num_beams=W, do_sample=False, max_new_tokens=n, length_penalty=lp,
early_stopping=es, num_return_sequences=r, output_scores=True, return_dict_in_generate=True)`` of
transformers 5.x returns for that prompt run alone: the same token sequences (new tokens only) and
the same ``sequences_scores``. Per step and prompt (``t`` new tokens so far, ``K = max(2, 1 +
num_eos) * W``):

1. every running beam's next-token log-softmax plus its running log-prob sum gives ``W * V``
   candidates; keep the best ``K`` (beam ``w``, token ``v`` is candidate ``w * V + v``). At ``t = 0``
   only beam 0 is real; the other ``W - 1`` hold the prompt with score ``-1e9``, as in transformers.
2. a candidate ends its hypothesis when its token is an EOS token or ``t + 1 == n``; the best ``W``
   candidates that did not end become the running beams (before step ``n - 1`` there are always
   ``W`` of them: a beam adds at most ``num_eos`` ended candidates to the ``K``).
3. ended candidates among the first ``W`` of the ``K`` join the ``W`` finished hypotheses with
   score ``sum_logprob / (t + 1) ** lp``; the best ``W`` of old and new stay.
4. the prompt stops when every candidate ended (``t + 1 == n``), when ``es=True`` and all ``W``
   slots hold finished hypotheses, or when all ``W`` do and the best running sum divided by
   ``(t + 1) ** lp`` (by ``n ** lp`` when ``es="never"`` and ``lp > 0``) is not above the worst
   finished score. The best ``r`` finished hypotheses are returned.

Supported settings: ``num_beams >= 1`` (``num_beams=1`` is greedy decoding, which is what
transformers runs for it; transformers reports no ``sequences_scores`` there, and this returns
the greedy sequence's log-prob sum divided by ``length ** lp``), any finite ``length_penalty``,
``early_stopping`` in ``{True, False, "never"}``, ``1 <= num_return_sequences <= num_beams``,
any set of EOS tokens. Beam search needs ``vocab_size >= K``: then the ``-1e9`` placeholder beams
of step 0 never win a slot and every running beam is a real sequence with KV. Not supported
(transformers features this does not reproduce): logits processors (repetition penalty, min
length, bad words, ...), sampling, beam groups, constraints, stop strings, padding / attention
masks (each prompt is compared with transformers run on it alone).

On the KV cache: a prompt is prefilled once; the step-0 beams are forks of its engine sequence (a
refcount increment, no prefix copy); a beam continued by several candidates is forked, a beam
continued by none is freed at once, and all running beams of all prompts decode in one
``Engine.decode`` call per step (copy-on-write page copies batched in it). Every sequence is
freed when the call returns, also when it raises.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = ["TokenBeamConfig", "TokenBeamOutput", "TokenBeamStats", "token_beam_search"]

# transformers' "impossible" score. Added (not assigned) exactly where transformers adds it, so
# sums and ties round the same way in fp32.
_NEG = -1.0e9


@dataclass(frozen=True)
class TokenBeamConfig:
    """Settings of :func:`token_beam_search`, named and defaulted as in transformers' generate.

    num_beams: W, beams kept per prompt (1 = greedy decoding).
    max_new_tokens: n, the most tokens generated per sequence.
    length_penalty: lp, finished scores are ``sum_logprob / length ** lp``.
    early_stopping: ``True`` (stop once W hypotheses finished), ``False`` (stop when the best
        running beam at its current length cannot beat the worst finished one) or ``"never"``
        (as False, but with ``lp > 0`` the running beam is judged at length n).
    num_return_sequences: r, finished hypotheses returned per prompt, ``1 <= r <= W``.
    eos_token_ids: tokens that end a hypothesis; ``None`` takes the engine's.
    """

    num_beams: int = 4
    max_new_tokens: int = 32
    length_penalty: float = 1.0
    early_stopping: Union[bool, str] = False
    num_return_sequences: int = 1
    eos_token_ids: Optional[Tuple[int, ...]] = None

    def __post_init__(self):
        for name in ("num_beams", "max_new_tokens", "num_return_sequences"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        lp = self.length_penalty
        if isinstance(lp, (bool, np.bool_)) or not isinstance(lp, (int, float, np.integer, np.floating)) \
                or not math.isfinite(lp):
            raise ValueError(f"length_penalty must be a finite number, got {lp!r}")
        object.__setattr__(self, "length_penalty", float(lp))
        es = self.early_stopping
        if isinstance(es, np.bool_):
            es = bool(es)
        if not (isinstance(es, bool) or (isinstance(es, str) and es == "never")):
            raise ValueError(f"early_stopping must be True, False or 'never', got {es!r}")
        object.__setattr__(self, "early_stopping", es)
        if self.num_return_sequences > self.num_beams:
            raise ValueError(f"num_return_sequences must be in [1, num_beams={self.num_beams}], "
                             f"got {self.num_return_sequences}")
        if self.eos_token_ids is not None:
            ids = self.eos_token_ids
            if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
                raise TypeError(f"eos_token_ids must be a sequence of token ids or None, got {type(ids).__name__}")
            ids = tuple(ids)
            for t in ids:
                if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)) or t < 0:
                    raise ValueError(f"eos_token_ids must hold ints >= 0, got {t!r}")
            if len(set(ids)) != len(ids):
                raise ValueError(f"eos_token_ids has duplicates: {ids!r}")
            object.__setattr__(self, "eos_token_ids", tuple(int(t) for t in ids))


@dataclass
class TokenBeamStats:
    """Per prompt: rows it fed through the model after its prefill, forwards it took part in (its
    prefill included), and the most distinct KV pages its sequences held at once."""

    tokens_decoded: int = 0
    model_calls: int = 0
    kv_pages_peak: int = 0


@dataclass
class TokenBeamOutput:
    """One prompt's result. sequences: r int32 arrays of new token ids (EOS kept when it ended the
    hypothesis), best first; sequence_scores: float32 [r], their length-penalised scores."""

    sequences: List[np.ndarray]
    sequence_scores: np.ndarray
    stats: TokenBeamStats


class _Beams:
    """The beam-search state of B prompts as tensors, updated for any subset of rows at once.

    run_scores [B, W] fp32 and run_tokens [B, W, n] int64: running beams (log-prob sums, tokens);
    fin_scores / fin_tokens / fin_len / fin_flag [B, W]: finished hypotheses, best first
    (fin_flag False marks a slot no hypothesis filled yet).
    """

    def __init__(self, num_prompts: int, cfg: TokenBeamConfig, eos: torch.Tensor, device: torch.device):
        B, W, n = num_prompts, cfg.num_beams, cfg.max_new_tokens
        self.cfg, self.eos = cfg, eos
        self.K = max(2, 1 + eos.numel()) * W
        self.top_mask = torch.arange(self.K, device=device) < W  # [K]: the first W candidates
        self.run_scores = torch.zeros(B, W, dtype=torch.float32, device=device)
        self.run_scores[:, 1:] = _NEG
        self.run_tokens = torch.zeros(B, W, n, dtype=torch.int64, device=device)
        self.fin_scores = torch.full((B, W), _NEG, dtype=torch.float32, device=device)
        self.fin_tokens = torch.zeros(B, W, n, dtype=torch.int64, device=device)
        self.fin_len = torch.zeros(B, W, dtype=torch.int64, device=device)
        self.fin_flag = torch.zeros(B, W, dtype=torch.bool, device=device)

    def greedy_step(self, rows: torch.Tensor, logits: torch.Tensor, t: int):
        """logits [b, 1, V] -> (source beam [b, 1], token [b, 1], done [b])."""
        n, lp = self.cfg.max_new_tokens, self.cfg.length_penalty
        logits = logits[:, 0]  # [b, V]
        tok = torch.argmax(logits, dim=-1, keepdim=True)  # [b, 1]; on logits, like transformers
        logp = torch.log_softmax(logits, dim=-1).gather(1, tok)  # [b, 1]
        scores = self.run_scores[rows] + logp
        tokens = self.run_tokens[rows]
        tokens[:, 0, t] = tok[:, 0]
        done = torch.isin(tok[:, 0], self.eos) | (t + 1 >= n)  # [b]
        self.run_scores[rows], self.run_tokens[rows] = scores, tokens
        d = done[:, None]
        self.fin_scores[rows] = torch.where(d, scores / ((t + 1) ** lp), self.fin_scores[rows])
        self.fin_tokens[rows] = torch.where(d[:, :, None], tokens, self.fin_tokens[rows])
        self.fin_len[rows] = torch.where(d, t + 1, self.fin_len[rows])
        self.fin_flag[rows] = self.fin_flag[rows] | d
        return torch.zeros_like(tok), tok, done

    def beam_step(self, rows: torch.Tensor, logp: torch.Tensor, t: int):
        """logp [b, W, V] next-token log-softmax of the running beams of ``rows`` ->
        (source beam [b, W], token [b, W], done [b]) of the new running beams."""
        cfg = self.cfg
        W, n, lp, es = cfg.num_beams, cfg.max_new_tokens, cfg.length_penalty, cfg.early_stopping
        b, _, V = logp.shape
        acc = (logp + self.run_scores[rows][:, :, None]).reshape(b, W * V)  # [b, W*V]
        top_lp, top_idx = torch.topk(acc, self.K)  # [b, K]
        top_src, top_tok = top_idx // V, top_idx % V  # [b, K]
        cand_tokens = torch.take_along_dim(self.run_tokens[rows], top_src[:, :, None], dim=1)  # [b, K, n]
        cand_tokens[:, :, t] = top_tok
        hits = torch.isin(top_tok, self.eos) | (t + 1 >= n)  # [b, K]: candidate ends its hypothesis

        run_lp = top_lp + hits.to(torch.float32) * _NEG
        keep = torch.topk(run_lp, W)[1]  # [b, W]
        run_scores = run_lp.gather(1, keep)
        self.run_scores[rows] = run_scores
        self.run_tokens[rows] = torch.take_along_dim(cand_tokens, keep[:, :, None], dim=1)

        just = hits & self.top_mask[None, :]  # [b, K]
        # transformers also adds -1e9 here for batch rows whose search is over (heuristic fired,
        # or all W finished with es=True) but which keep stepping with the rest of the batch; such
        # a prompt has left the batch here, so both terms would always be 0. For the same reason
        # its heuristic flag needs no memory: a prompt still here has it set.
        cand = top_lp / ((t + 1) ** lp)
        cand = cand + (~just).to(torch.float32) * _NEG
        merged = torch.cat((self.fin_scores[rows], cand), dim=1)  # [b, W + K]
        pick = torch.topk(merged, W)[1]  # [b, W]
        fin_scores = merged.gather(1, pick)
        fin_flag = torch.cat((self.fin_flag[rows], just), dim=1).gather(1, pick)
        lengths = torch.cat((self.fin_len[rows], torch.full_like(top_tok, t + 1)), dim=1)
        all_tokens = torch.cat((self.fin_tokens[rows], cand_tokens), dim=1)  # [b, W + K, n]
        self.fin_scores[rows], self.fin_flag[rows] = fin_scores, fin_flag
        self.fin_len[rows] = lengths.gather(1, pick)
        self.fin_tokens[rows] = torch.take_along_dim(all_tokens, pick[:, :, None], dim=1)

        best_len = n if (es == "never" and lp > 0.0) else t + 1
        best_running = run_scores[:, :1] / (best_len ** lp)  # [b, 1]
        worst = torch.where(fin_flag, fin_scores.min(dim=1, keepdim=True)[0], _NEG)  # [b, W]
        improvable = (best_running > worst).any(dim=-1)  # [b]
        done = ~(improvable & ~(fin_flag.all(dim=1) & (es is True)) & ~hits.all(dim=1))
        return top_src.gather(1, keep), top_tok.gather(1, keep), done

    def output(self, row: int, r: int) -> Tuple[List[np.ndarray], np.ndarray]:
        lens = self.fin_len[row, :r].tolist()
        tokens = self.fin_tokens[row, :r].cpu().numpy()
        seqs = [tokens[j, :lens[j]].astype(np.int32) for j in range(r)]
        return seqs, self.fin_scores[row, :r].cpu().numpy().astype(np.float32)


class _Search:
    """The KV side of one call: one engine sequence per running beam of every prompt."""

    def __init__(self, engine, roots: np.ndarray, cfg: TokenBeamConfig):
        self.engine, self.cfg = engine, cfg
        self.roots: List[Optional[int]] = [int(r) for r in roots]
        self.seqs: List[List[int]] = [[] for _ in self.roots]
        self.owned: List[List[bool]] = [[] for _ in self.roots]
        self.prompt_lens = [engine.num_tokens(r) for r in self.roots]
        self.stats = [TokenBeamStats(model_calls=1) for _ in self.roots]

    def start(self) -> None:
        """Point every beam slot at its prompt's sequence (so step 0 forks it)."""
        for p, r in enumerate(self.roots):
            self.seqs[p], self.owned[p] = [r] * self.cfg.num_beams, [False] * self.cfg.num_beams
            self.stats[p].kv_pages_peak = self.engine.distinct_pages([r])

    def reseat(self, p: int, src: Sequence[int]) -> None:
        """New running beams of prompt ``p`` continue old beams ``src``: each forks its source
        (a refcount increment), then the old handles are freed, so a beam continued once ends up
        alone on its pages again and one continued by none loses its pages at once."""
        old, owned = self.seqs[p], self.owned[p]
        new = self.engine.fork([old[s] for s in src]).tolist()
        self.engine.free([h for h, mine in zip(old, owned) if mine])
        self.seqs[p], self.owned[p] = new, [True] * len(new)

    def drop(self, p: int) -> None:
        self.engine.free([h for h, mine in zip(self.seqs[p], self.owned[p]) if mine])
        self.seqs[p], self.owned[p] = [], []

    def release_roots(self) -> None:
        roots = [r for r in self.roots if r is not None]
        self.roots = [None] * len(self.roots)
        self.engine.free(roots)

    def cleanup(self) -> None:
        for p in range(len(self.seqs)):
            self.drop(p)
        self.release_roots()

    def run(self, eos_ids: List[int], progress: bool) -> _Beams:
        """Step all prompts until each is done; returns the final beam state."""
        eng, cfg = self.engine, self.cfg
        W, n, device = cfg.num_beams, cfg.max_new_tokens, eng.device
        for i, m in enumerate(self.prompt_lens):
            if m + n > eng.max_context:
                raise ValueError(f"prompts[{i}] has {m} tokens and max_new_tokens={n}: together more than "
                                 f"the model's context of {eng.max_context}")
        self.start()
        beams = _Beams(len(self.roots), cfg, torch.tensor(eos_ids, dtype=torch.int64, device=device), device)
        logits = eng.model.logits(eng.hidden(self.roots)).float()[:, None, :]  # [B, 1, V]
        logits = logits.expand(-1, W, -1)  # step-0 placeholder beams are the prompt itself
        active = list(range(len(self.roots)))
        for t in tqdm(range(n), disable=not progress, desc="token beam search", unit="step"):
            rows = torch.tensor(active, dtype=torch.int64, device=device)
            if W == 1:
                src, tok, done = beams.greedy_step(rows, logits, t)
            else:
                src, tok, done = beams.beam_step(rows, torch.log_softmax(logits, dim=-1), t)
            src, tok, done = src.cpu().numpy(), tok.cpu().numpy(), done.cpu().numpy()
            for i, p in enumerate(active):
                if done[i]:
                    logger.debug("token beam search: prompt %d done after %d steps", p, t + 1)
                    self.drop(p)
                else:
                    self.reseat(p, src[i].tolist())
            if t == 0:
                self.release_roots()  # the beams hold the prompt pages now
            active = [p for i, p in enumerate(active) if not done[i]]
            if not active:  # at the latest after step n - 1, where every candidate ends
                break
            logits = self.decode(active, tok[~done])
        return beams

    def decode(self, prompts: List[int], tokens: np.ndarray) -> torch.Tensor:
        """Feed ``tokens`` int [b, W] (the next token of each running beam of ``prompts``) in one
        engine decode step; returns the next-token logits ``[b, W, V]`` fp32."""
        eng, W = self.engine, self.cfg.num_beams
        seqs = [h for p in prompts for h in self.seqs[p]]
        hidden = eng.decode(seqs, tokens.reshape(-1))  # [b * W, C]
        for i, p in enumerate(prompts):
            st = self.stats[p]
            st.tokens_decoded += W
            st.model_calls += 1
            st.kv_pages_peak = max(st.kv_pages_peak, eng.distinct_pages(seqs[i * W:(i + 1) * W]))
        logits = eng.model.logits(hidden).float()  # [b * W, V]
        return logits.reshape(len(prompts), W, -1)


def _check_engine(engine) -> None:
    for attr in ("model", "prefill", "decode", "fork", "free", "hidden", "num_tokens", "distinct_pages"):
        if not hasattr(engine, attr):
            raise TypeError(f"engine must be a ponder.Engine, got {type(engine).__name__} (no {attr!r})")


def token_beam_search(engine, prompts: Sequence, config: TokenBeamConfig,
                      progress: bool = False) -> List[TokenBeamOutput]:
    """Beam search over tokens for every prompt at once; see the module docstring for the exact
    semantics (those of transformers' ``generate`` with ``num_beams``) and supported settings.

    engine: a :class:`ponder.engine.Engine`; prompts: token-id sequences (or str with the
    engine's tokenizer), each with ``len + max_new_tokens <= max_position_embeddings``;
    progress: show a tqdm bar over decoding steps. Returns one :class:`TokenBeamOutput` per
    prompt, in order. Raises ``ValueError`` / ``TypeError`` on bad input and
    :class:`ponder.page_table.KVCacheFull` when the pool cannot hold the beams; every page taken
    is released in all cases.
    """
    _check_engine(engine)
    if not isinstance(config, TokenBeamConfig):
        raise TypeError(f"config must be a TokenBeamConfig, got {type(config).__name__}")
    cfg = config
    W = cfg.num_beams
    vocab = int(engine.model.config.vocab_size)
    eos_ids = sorted(engine.eos_token_ids) if cfg.eos_token_ids is None else list(cfg.eos_token_ids)
    bad = [t for t in eos_ids if t >= vocab]
    if bad:
        raise ValueError(f"eos_token_ids {bad} are outside the vocabulary [0, {vocab})")
    K = max(2, 1 + len(eos_ids)) * W
    if W > 1 and vocab < K:
        raise ValueError(f"num_beams={W} with {len(eos_ids)} EOS tokens keeps {K} candidates per step, "
                         f"more than the vocabulary ({vocab}); use num_beams <= {vocab // (K // W)}")
    roots = engine.prefill(prompts)
    search = _Search(engine, roots, cfg)
    try:
        with torch.inference_mode():
            beams = search.run(eos_ids, progress)
    finally:
        search.cleanup()
    outs = []
    for p in range(len(roots)):
        seqs, scores = beams.output(p, cfg.num_return_sequences)
        outs.append(TokenBeamOutput(sequences=seqs, sequence_scores=scores, stats=search.stats[p]))
    return outs
