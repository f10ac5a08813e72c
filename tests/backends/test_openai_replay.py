"""OpenAICompatible against a local HTTP server replaying responses in the layouts of llama.cpp's
``llama-server`` and llama-cpp-python's server (the vLLM path is tested live in test_vllm_live.py):
chat-layout logprobs, stop strings left out of the text, EOS, a cap on ``n``, ``n`` ignored,
retries, timeouts, HTTP errors and malformed answers."""

import numpy as np
import pytest

import ponder
from ponder.backends import BackendError, OpenAICompatible, RetryPolicy, request_seed
from replay_server import (CharTokenizer, ReplayServer, llama_cpp_python_body, llama_server_body,
                           llama_server_choice)

FAST = RetryPolicy(timeout_s=2.0, max_retries=2, backoff_s=0.01, max_backoff_s=0.02)
STOP = ponder.StepStop(strings=("\n",), max_step_tokens=16)


def backend(server, **kw):
    kw.setdefault("retry", FAST)
    return OpenAICompatible(server.url, "smollm2", CharTokenizer(), **kw)


def test_llama_server_layout_gives_ids_logprobs_and_the_stop_string_back():
    body = llama_server_body([llama_server_choice("2+2=4", 0, logprob=-0.1),
                              llama_server_choice("2*2=4", 1, logprob=-0.2)])
    with ReplayServer([(200, body)]) as srv:
        be = backend(srv)
        (root,) = be.prefill(["Q: 2?\n"])
        exp = be.expand([root], 2, stop=STOP, sampling=ponder.SamplingParams(temperature=0.7, top_k=5), seed=11,
                        rng_ids=[0])
    req = srv.requests[0]
    assert req["prompt"] == [ord(c) for c in "Q: 2?\n"]
    assert (req["n"], req["max_tokens"], req["stop"], req["logprobs"]) == (2, 16, ["\n"], 1)
    assert req["seed"] == request_seed(11, 0, 0)
    assert (req["temperature"], req["top_k"], req["top_p"]) == (0.7, 5, 1.0)
    assert [be.tokenizer.decode(t) for t in exp.tokens] == ["2+2=4\n", "2*2=4\n"]
    assert exp.finish_reasons == ["stop", "stop"] and not exp.terminal.any()
    np.testing.assert_allclose(exp.logprobs[0], [-0.1] * 5)
    # priors: exp(-0.5) : exp(-1.0), normalised
    np.testing.assert_allclose(exp.priors, [1 / (1 + np.exp(-0.5)), 1 - 1 / (1 + np.exp(-0.5))], rtol=1e-5)
    assert be.text(exp.children[1]) == "Q: 2?\n2*2=4\n"
    assert be.tokens(exp.children[0]).tolist() == [ord(c) for c in "Q: 2?\n2+2=4\n"]
    assert exp.hidden.shape == (2, 0) and exp.values is None
    assert be.kv_stats()["prefix_queries"] == 5 and be.stats.model_calls == 1


def test_eos_token_in_the_chat_layout_makes_the_child_terminal():
    body = llama_server_body([llama_server_choice("4", 0, eos=True)])
    with ReplayServer([(200, body)]) as srv:
        be = backend(srv)
        exp = be.expand(be.prefill(["2+2="]), 1, stop=STOP)
    assert exp.finish_reasons == ["eos"] and exp.terminal.tolist() == [True]
    assert be.tokenizer.decode(exp.tokens[0]) == "4"  # neither EOS nor a stop string is added


def test_length_finish_and_max_context():
    body = llama_server_body([llama_server_choice("abc", 0, finish_reason="length")])
    with ReplayServer([(200, body), (200, body)]) as srv:
        be = backend(srv, max_context=8)
        (root,) = be.prefill(["12345"])
        exp = be.expand([root], 1, stop=STOP)
        assert srv.requests[0]["max_tokens"] == 3  # cut to the room left in the context
        assert exp.finish_reasons == ["context"] and exp.terminal.all()
        with pytest.raises(ValueError, match="fills max_context"):
            be.expand(exp.children, 1, stop=STOP)


def test_n_capped_by_parallel_slots_halves_the_samples_per_request():
    too_many = {"error": {"code": 400, "message": "n_cmpl cannot be greater than the number of slots, please "
                                                  "increase -np", "type": "invalid_request_error"}}

    def answer(req):
        if req["n"] > 2:
            return 400, too_many
        return 200, llama_server_body([llama_server_choice(f"s{req['seed'] % 97}-{i}", i) for i in range(req["n"])])

    with ReplayServer(answer) as srv:
        be = backend(srv)
        exp = be.expand(be.prefill(["go:"]), 5, stop=STOP, seed=3)
    ns = [r["n"] for r in srv.requests]
    assert ns[:2] == [5, 2] and sorted(ns[2:]) == [1, 2]  # 5 refused, then 2 + 2 + 1
    assert be.max_samples_per_request == 2 and len(exp.children) == 5
    seeds = [r["seed"] for r in srv.requests[1:]]
    assert len(set(seeds)) == 3  # every request its own seed: samples do not repeat


def test_llama_cpp_python_ignores_n_so_each_sample_is_its_own_request():
    def answer(req):
        return 200, llama_cpp_python_body(f"x{req['seed'] % 1000}")

    with ReplayServer(answer) as srv:
        be = backend(srv)
        exp = be.expand(be.prefill(["go:", "again:"]), 3, stop=STOP, seed=5)
    assert len(srv.requests) == 2 * 3 and len(exp.children) == 6
    assert exp.parent_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert be.max_samples_per_request == 1
    # no token ids reported: the step's tokens are the local encoding of its text (+ the stop string)
    for t, c in zip(exp.tokens, exp.children):
        text = be.tokenizer.decode(t)
        assert text.startswith("x") and text.endswith("\n") and be.text(c).endswith(text)
        assert be.tokenizer.decode(t) == "".join(map(chr, t))


def test_same_seed_same_requests_and_greedy_asks_once():
    def answer(req):
        return 200, llama_server_body([llama_server_choice(f"{req['seed']}", i) for i in range(req["n"])])

    with ReplayServer(answer) as srv:
        be = backend(srv)
        root = be.prefill(["p"])
        a = be.expand(root, 2, stop=STOP, seed=9, rng_ids=[4])
        b = be.expand(root, 2, stop=STOP, seed=9, rng_ids=[4])  # next draws: new child indices, new seed
        g = be.expand(root, 3, stop=STOP, sampling=ponder.SamplingParams(temperature=0.0))
    assert srv.requests[0]["seed"] == request_seed(9, 4, 0) and srv.requests[1]["seed"] == request_seed(9, 4, 2)
    assert [x.tolist() for x in a.tokens] != [x.tolist() for x in b.tokens]
    assert srv.requests[2]["n"] == 1 and len(g.children) == 3
    assert len({tuple(t.tolist()) for t in g.tokens}) == 1


def test_distinct_drops_repeated_steps():
    body = llama_server_body([llama_server_choice("same", 0), llama_server_choice("same", 1),
                              llama_server_choice("other", 2)])
    with ReplayServer([(200, body)]) as srv:
        be = backend(srv)
        root = be.prefill(["p"])
        exp = be.expand(root, 3, stop=STOP, distinct=True)
    assert [be.tokenizer.decode(t) for t in exp.tokens] == ["same\n", "other\n"]
    assert exp.discarded_tokens == {int(root[0]): 5}


def test_transient_errors_are_retried_with_backoff():
    ok = llama_server_body([llama_server_choice("fine", 0)])
    script = [(503, {"error": {"message": "loading model"}}), (429, {"error": {"message": "busy"}}), (200, ok)]
    with ReplayServer(script) as srv:
        be = backend(srv)
        exp = be.expand(be.prefill(["p"]), 1, stop=STOP)
    assert len(srv.requests) == 3 and be.tokenizer.decode(exp.tokens[0]) == "fine\n"


def test_timeouts_and_http_errors_raise_clear_errors_and_keep_the_finished_part():
    ok = llama_server_body([llama_server_choice("step", 0)])
    script = [(200, ok), (200, ok, 1.5), (200, ok, 1.5), (404, {"error": {"message": "model 'x' not found"}}),
              (200, {"choices": []}), (200, "<html>gateway</html>"), (200, ok)]
    with ReplayServer(script) as srv:
        be = backend(srv, retry=RetryPolicy(timeout_s=0.5, max_retries=1, backoff_s=0.01))
        root = be.prefill(["p"])
        first = be.expand(root, 1, stop=STOP)
        with pytest.raises(BackendError, match=r"failed after 2 attempt\(s\) \(timeout 0.5 s each\)"):
            be.expand(first.children, 1, stop=STOP)
        with pytest.raises(BackendError, match=r"HTTP 404: model 'x' not found") as err:
            be.expand(first.children, 1, stop=STOP)
        assert err.value.status == 404
        with pytest.raises(BackendError, match="malformed completion: expected a non-empty 'choices'"):
            be.expand(first.children, 1, stop=STOP)
        with pytest.raises(BackendError, match="not JSON"):
            be.expand(first.children, 1, stop=STOP)
        # nothing was lost: the first step is still there and the search goes on from it
        again = be.expand(first.children, 1, stop=STOP)
    assert be.text(again.children[0]) == "pstep\nstep\n"
    assert be.tokens(first.children[0]).tolist() == [ord(c) for c in "pstep\n"]


def test_arguments_are_checked():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="base_url must be an http"):
        OpenAICompatible("localhost:8000", "m", tok)
    with pytest.raises(TypeError, match="tokenizer must have encode"):
        OpenAICompatible("http://127.0.0.1:1", "m", None)
    with pytest.raises(ValueError, match="max_concurrency must be an int >= 1"):
        OpenAICompatible("http://127.0.0.1:1", "m", tok, max_concurrency=0)
    with pytest.raises(ValueError, match="max_retries must be an int >= 0"):
        RetryPolicy(max_retries=-1)
    be = OpenAICompatible("http://127.0.0.1:1/v1", "m", tok)
    assert be.url == "http://127.0.0.1:1/v1/completions"
    root = be.prefill(["p"])
    with pytest.raises(ValueError, match="allowed_tokens .* not available|per-token callback"):
        be.expand(root, 1, allowed_tokens=lambda h, t: None)
    with pytest.raises(ValueError, match="rng_ids must be 1 non-negative ints"):
        be.expand(root, 1, rng_ids=[-1])
    with pytest.raises(KeyError, match="no live sequence 99"):
        be.expand([99], 1)
