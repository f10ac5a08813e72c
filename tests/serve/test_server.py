"""``ponder serve`` with the bundled Countdown model, through the official ``openai`` client.

Every test ends by checking that the server has no live request and that every KV page and
sequence went back to the pool (``Server.wait_idle``)."""

from __future__ import annotations

import json
import threading

import pytest

from ponder.tasks import countdown

for _module in ("fastapi", "uvicorn", "openai"):
    pytest.importorskip(_module)
httpx = pytest.importorskip("httpx")

PROBLEM = countdown.Problem((3, 7, 25, 50), 175)
PROMPT = "3 7 25 50 -> 175 any"
MODEL = "countdown"


def solves(text: str, problem: countdown.Problem = PROBLEM) -> bool:
    return countdown.check(problem, text).ok


def test_models_health_and_stats(server):
    client = server.client()
    assert [m.id for m in client.models.list().data] == [MODEL]
    h = server.wait_idle()
    assert h["status"] == "ok" and h["kv"]["num_pages"] > 0
    stats = httpx.get(server.url + "/v1/ponder/stats").json()
    assert stats["defaults"]["task"] == "countdown" and stats["defaults"]["algorithm"] == "mcts"


def test_chat_mcts_answers_and_reports_usage(server):
    out = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}],
        extra_body={"ponder": {"algorithm": "mcts", "budget": {"expansions": 16}}})
    answer = out.choices[0].message.content
    assert solves(answer), answer
    assert out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens == len(PROBLEM.prompt())  # one token per character
    assert out.usage.completion_tokens > len(answer)  # every branch's tokens, not only the answer's
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.usage.model_extra["scored_steps"] > 0
    report = out.model_extra["ponder"]
    assert report["algorithm"] == "mcts" and report["stop_reason"] == "verified"
    assert report["peak_kv_bytes"] > 0 and report["wall_time_s"] > 0
    server.wait_idle()


@pytest.mark.parametrize("algorithm, options", [
    ("beam_search", {"width": 2}),
    ("best_of_n", {"n": 8}),
])
def test_completions_each_search(server, algorithm, options):
    out = server.client().completions.create(
        model=MODEL, prompt=PROMPT, extra_body={"ponder": {"algorithm": algorithm, "options": options}})
    assert out.object == "text_completion" and len(out.choices) == 1
    report = out.model_extra["ponder"]
    assert report["algorithm"] == algorithm
    assert report["problems"][0]["verified"] == solves(out.choices[0].text)
    assert out.usage.completion_tokens > 0
    server.wait_idle()


def test_sample_is_plain_sampling(server):
    """"sample": n independent completions, cut at max_tokens or at the stop string."""
    client = server.client()
    out = client.completions.create(model=MODEL, prompt=PROMPT, n=4, max_tokens=7, temperature=1.0, seed=3,
                                    extra_body={"ponder": {"algorithm": "sample"}})
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for c in out.choices:
        assert len(c.text) <= 7 and c.finish_reason in ("length", "stop")
    assert out.usage.completion_tokens <= 4 * 7
    assert out.usage.model_extra["scored_steps"] == 0
    stopped = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}], stop="\n",
                                             max_tokens=40, extra_body={"ponder": {"algorithm": "sample"}})
    choice = stopped.choices[0]
    assert "\n" not in choice.message.content and choice.finish_reason == "stop"
    again = client.completions.create(model=MODEL, prompt=PROMPT, n=4, max_tokens=7, temperature=1.0, seed=3,
                                      extra_body={"ponder": {"algorithm": "sample"}})
    assert [c.text for c in again.choices] == [c.text for c in out.choices]  # seeded: reproducible
    server.wait_idle()


def test_n_returns_distinct_best_answers(server):
    out = server.client().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}], n=3,
        extra_body={"ponder": {"algorithm": "best_of_n", "options": {"n": 8}, "budget": {"stop_on_verified": False}}})
    texts = [c.message.content for c in out.choices]
    assert 1 <= len(texts) <= 3 and len({t.strip() for t in texts}) == len(texts)
    assert [c.index for c in out.choices] == list(range(len(texts)))
    server.wait_idle()


def _stream_events(server, path: str, body: dict):
    events = []
    with httpx.stream("POST", server.url + path, json=body, timeout=120.0) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[len("data: "):])
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_stream_chat_sends_best_so_far_then_the_answer(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "stream_options": {"include_usage": True},
            "ponder": {"budget": {"expansions": 12, "stop_on_verified": False}}}
    chunks = _stream_events(server, "/v1/chat/completions", body)
    progress = [c["ponder"] for c in chunks if c.get("ponder", {}).get("event") == "progress"]
    assert len(progress) >= 2, "the anytime answer should improve over several rounds"
    assert [p["round"] for p in progress] == sorted(p["round"] for p in progress)
    final = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert final and progress[-1]["answer"] == final
    assert chunks[-1]["usage"]["completion_tokens"] > 0 and chunks[-1]["ponder"]["event"] == "done"
    # the openai client reads the same stream; deltas concatenate to the final answer
    stream = server.client().chat.completions.create(
        model=MODEL, messages=body["messages"], stream=True, extra_body={"ponder": body["ponder"]})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == final  # same seed, same prompt: same search
    server.wait_idle()


def test_stream_completion(server):
    stream = server.client().completions.create(model=MODEL, prompt=PROMPT, stream=True,
                                                extra_body={"ponder": {"algorithm": "beam_search"}})
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert text.strip()
    server.wait_idle()


def test_client_disconnect_cancels_the_search(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "stream": True,
            "ponder": {"budget": {"expansions": 100000, "seconds": 60, "stop_on_verified": False}}}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60.0) as r:
        for line in r.iter_lines():
            if '"progress"' in line:
                break  # the search is running: hang up
    h = server.wait_idle(timeout=20.0)
    assert h["requests_done"] >= 1


def test_concurrent_requests_share_rounds(server):
    """Requests in flight together are searched in the same rounds (one session, one batch)."""
    prompts = ["3 7 25 50 -> 175 any", "2 4 6 8 -> 48 any", "5 9 11 13 -> 99 any", "1 3 5 9 -> 45 any"]
    before = server.health()["rounds"]
    results, errors = [None] * len(prompts), []

    def ask(i):
        try:
            results[i] = server.client().chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompts[i]}],
                extra_body={"ponder": {"budget": {"expansions": 6, "stop_on_verified": False}}})
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    rounds = server.health()["rounds"] - before
    alone = sum(r.model_extra["ponder"]["problems"][0]["iterations"] for r in results)
    assert rounds < alone, f"{rounds} rounds for {alone} request-rounds: requests were not batched"
    server.wait_idle()


@pytest.mark.parametrize("body, param", [
    ({"ponder": {"algorithm": "alphazero"}}, "ponder.algorithm"),
    ({"ponder": {"budget": {"expansions": -3}}}, "ponder.budget.expansions"),
    ({"ponder": "mcts"}, "ponder"),
    ({"ponder": {"budget": [8]}}, "ponder.budget"),
    ({"ponder": {"beam": 4}}, "ponder.beam"),
    ({"ponder": {"options": {"width": 0}, "algorithm": "beam_search"}}, "ponder.options.width"),
    ({"ponder": {"scorer": "prm"}}, "ponder.scorer"),
    ({"n": 0}, "n"),
    ({"temperature": "hot"}, "temperature"),
    ({"stop": "\n"}, "stop"),
    ({"messages": [{"role": "user", "content": "what is 2 + 2?"}]}, "messages"),
    ({"messages": [{"role": "user", "content": " ".join(["9"] * 200) + " -> 5 any"}]}, "messages"),
    ({"frobnicate": 1}, "frobnicate"),
])
def test_bad_requests_are_400_naming_the_field(server, body, param):
    full = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], **body}
    r = httpx.post(server.url + "/v1/chat/completions", json=full, timeout=30.0)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]
    server.wait_idle()


def test_errors_through_the_openai_client(server):
    import openai

    client = server.client()
    with pytest.raises(openai.BadRequestError, match="ponder.budget.expansions"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPT}],
                                       extra_body={"ponder": {"budget": {"expansions": 0}}})
    with pytest.raises(openai.NotFoundError, match="model"):
        client.completions.create(model="gpt-4", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model=MODEL, prompt="1 " * 300 + "-> 5 any",
                                  extra_body={"ponder": {"algorithm": "sample"}})
    server.wait_idle()


def test_malformed_json_and_unknown_paths(server):
    r = httpx.post(server.url + "/v1/chat/completions", content=b'{"model": "countdown", "messages": [',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.post(server.url + "/v1/completions", json=[1, 2])
    assert r.status_code == 400 and r.json()["error"]["param"] == "body"
    r = httpx.get(server.url + "/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()
    server.wait_idle()
