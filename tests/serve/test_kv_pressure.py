"""A server whose KV pool holds one Countdown search at a time: requests queue, a request that
cannot fit even alone gets a 503, and the server keeps serving with every page returned."""

from __future__ import annotations

import threading

import pytest

for _module in ("fastapi", "uvicorn", "openai", "httpx"):
    pytest.importorskip(_module)

from conftest import Server  # noqa: E402

from ponder.tasks import countdown  # noqa: E402

PAGES = 64  # 2 MiB of the bundled model's KV (32 KiB a page): one MCTS round of 12 children needs ~40
PROMPTS = ["3 7 25 50 -> 175 any", "2 4 6 8 -> 48 any", "5 9 11 13 -> 99 any", "1 3 5 9 -> 45 any"]


@pytest.fixture(scope="module")
def small_server():
    srv = Server("--max-kv-bytes", str(PAGES * 32 << 10))
    try:
        yield srv
    finally:
        srv.stop()


def test_small_pool_queues_requests_and_answers_all(small_server):
    assert small_server.health()["kv"]["num_pages"] == PAGES
    results, errors = [None] * len(PROMPTS), []

    def ask(i):
        try:
            results[i] = small_server.client().chat.completions.create(
                model="countdown", messages=[{"role": "user", "content": PROMPTS[i]}],
                extra_body={"ponder": {"budget": {"expansions": 8}}})
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for prompt, r in zip(PROMPTS, results):
        report = r.model_extra["ponder"]
        problem = countdown.Problem.from_prompt(prompt + "\n")
        assert report["problems"][0]["verified"] == countdown.check(problem, r.choices[0].message.content).ok
        assert report["peak_kv_bytes"] <= PAGES * 32 << 10
    # The pool takes about one search at a time (~40 of its 64 pages per round), so of four
    # requests sent together some are held back until pages come back; each says so, and the
    # server counts them.
    waited = [r.model_extra["ponder"]["waited_for_kv"] for r in results]
    assert any(waited), f"four requests in a pool that holds about one search, yet none was held back: {waited}"
    assert small_server.health()["requests_waited_for_kv"] == sum(waited)
    small_server.wait_idle()


def test_request_too_big_for_the_pool_is_refused_not_a_crash(small_server):
    import openai

    client = small_server.client()
    messages = [{"role": "user", "content": PROMPTS[0]}]
    # more children than pages: the engine refuses the ask outright
    with pytest.raises(openai.BadRequestError, match="ponder.options"):
        client.chat.completions.create(model="countdown", messages=messages,
                                       extra_body={"ponder": {"options": {"num_children": 200}}})
    small_server.wait_idle()
    # fewer children than pages, but their steps outgrow the pool even with nothing else running
    with pytest.raises(openai.InternalServerError, match="max-kv-bytes") as info:
        client.chat.completions.create(model="countdown", messages=messages,
                                       extra_body={"ponder": {"options": {"num_children": 60}}})
    assert info.value.status_code == 503
    small_server.wait_idle()
    out = client.chat.completions.create(model="countdown", messages=messages,
                                         extra_body={"ponder": {"algorithm": "best_of_n", "options": {"n": 2}}})
    assert out.choices[0].message.content
    small_server.wait_idle()
