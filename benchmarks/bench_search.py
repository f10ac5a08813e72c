"""Step-level beam search with a token-pair PRM on the CPU, SmolLM2-135M: ponder vs the common way.

The common way (as in search-and-learn) is written here on transformers: every round, each
beam's full text is re-tokenised and ``generate`` re-reads it to sample ``expansion`` next steps
(stopping at the step delimiter), and the PRM re-reads every candidate's full sequence to score
it. ponder keeps the tree as KV pages: each step decodes only its own tokens, branches fork pages,
and the PRM readout ``sigmoid(h · (W[good] - W[bad]))`` comes from the step's last hidden state.
Both run ``--steps`` rounds of width W (3 steps of at most 32 tokens, delimiter "\\n").
Reported: generated tokens per second of each, wall time, and the ratio. Before timing, the
PRM readout of ponder is checked against the full-sequence recomputation.

    python benchmarks/bench_search.py [--quick]
"""

from __future__ import annotations

import argparse
import time

import ponder  # (first, before torch loads: passive OpenMP waiting, MKL_CBWR; see ponder/__init__.py)
import torch

from _smollm2 import LONG_PROMPT, chat_ids, load_pair


def prm_direction(model, tok):
    good, bad = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    w = (model.embed if model.lm_head is None else model.lm_head).detach()
    return good, bad, (w[good] - w[bad]).float()


def hf_prm_scores(hf, seqs, direction):
    scores = []
    with torch.inference_mode():
        for ids in seqs:  # the PRM re-reads each candidate's whole sequence
            out = hf(torch.tensor([ids]), output_hidden_states=True)
            scores.append(torch.sigmoid(out.hidden_states[-1][0, -1].float() @ direction).item())
    return scores


def hf_beam_search(hf, tok, prompt_ids, width, expansion, steps, max_step_tokens, direction):
    beams, generated = [list(prompt_ids)], 0
    for step in range(steps):
        cands = []
        for beam in beams:
            k = width * expansion if step == 0 else expansion
            with torch.inference_mode():
                out = hf.generate(torch.tensor([beam]), do_sample=True, num_return_sequences=k,
                                  max_new_tokens=max_step_tokens, stop_strings=["\n"], tokenizer=tok,
                                  pad_token_id=tok.eos_token_id, top_k=0, top_p=1.0)
            for row in out[:, len(beam):].tolist():
                new = []
                for t in row:
                    new.append(t)
                    if "\n" in tok.decode(new) or t == tok.eos_token_id:
                        break
                generated += len(new)
                cands.append(beam + new)
        scores = hf_prm_scores(hf, cands, direction)
        order = sorted(range(len(cands)), key=lambda i: -scores[i])
        beams = [cands[i] for i in order[:width]]
    return generated


def ponder_beam_search(model, tok, prompt_ids, width, expansion, steps, max_step_tokens, good, bad):
    eng = ponder.Engine(model, tok, num_pages=4096, page_size=16)
    [r] = ponder.beam_search([prompt_ids], eng, scorer=ponder.TokenPairPRM(good, bad), width=width, expansion=expansion,
                             max_steps=steps, stop=ponder.StepStop(strings=("\n",), max_step_tokens=max_step_tokens),
                             progress=False, seed=0)
    return r


def check_prm(model, hf, tok, prompt_ids, good, bad, direction):
    eng = ponder.Engine(model, tok, num_pages=512, page_size=16)
    roots = eng.prefill([prompt_ids])
    exp = eng.expand(roots, 2, stop=ponder.StepStop(strings=("\n",), max_step_tokens=16), seed=1)
    mine = ponder.TokenPairPRM(good, bad).score(eng, exp)
    theirs = hf_prm_scores(hf, [list(prompt_ids) + t.tolist() for t in exp.tokens], direction)
    # fp32 on identical weights: only summation order differs (measured < 1e-5)
    assert max(abs(a - b) for a, b in zip(mine, theirs)) < 1e-4, (mine, theirs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="width 2, 2 steps of <= 8 tokens")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, hf, tok = load_pair()
    prompt = chat_ids(tok, LONG_PROMPT)
    good, bad, direction = prm_direction(model, tok)
    check_prm(model, hf, tok, prompt, good, bad, direction)
    steps, max_tok, widths = (2, 8, [2]) if args.quick else (3, 32, [4, 8])
    expansion = 2
    print(f"prompt {len(prompt)} tokens, {steps} steps of <= {max_tok} tokens, expansion {expansion}, "
          f"{args.threads} threads")
    print(f"{'W':>3} {'ponder s':>9} {'tokens':>7} {'tok/s':>8} {'hf s':>8} {'tokens':>7} {'tok/s':>8} {'ratio':>7}")
    for w in widths:
        t0 = time.perf_counter()
        r = ponder_beam_search(model, tok, prompt, w, expansion, steps, max_tok, good, bad)
        t_p = time.perf_counter() - t0
        n_p = r.stats["tokens_generated"]
        t0 = time.perf_counter()
        n_h = hf_beam_search(hf, tok, prompt, w, expansion, steps, max_tok, direction)
        t_h = time.perf_counter() - t0
        print(f"{w:>3} {t_p:>9.2f} {n_p:>7} {n_p / t_p:>8.1f} {t_h:>8.2f} {n_h:>7} {n_h / t_h:>8.1f} "
              f"{(n_p / t_p) / (n_h / t_h):>6.2f}x")


if __name__ == "__main__":
    main()
