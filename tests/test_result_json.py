"""SearchResult JSON: round trips of real search results, and corrupted texts refused by name."""

import copy
import json

import pytest

import ponder
from fake_policy import FakePolicy
from ponder import Budget, SearchResult

SEARCHES = {
    "mcts": dict(algorithm="mcts", budget=Budget(max_expansions=4), num_children=2),
    "beam_search": dict(algorithm="beam_search", width=2, expansion=2),
    "best_of_n": dict(algorithm="best_of_n", n=3),
}


def _result(name="mcts"):
    [r] = ponder.search(["1"], FakePolicy(by_index=(0.2, 0.8)), progress=False, **SEARCHES[name])
    return r


@pytest.fixture(scope="module")
def payload():
    """A real MCTS result's JSON object, with a tree of more than one level."""
    data = json.loads(_result().to_json())
    assert len(data["nodes"]["parent"]) >= 4 and len(data["path"]) >= 2
    return data


@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_round_trip_of_real_results(name):
    r = _result(name)
    text = r.to_json(indent=1)
    assert json.loads(text)["format_version"] == 1
    back = SearchResult.from_json(text)
    for field in ("algorithm", "problem_index", "answer", "answer_tokens", "verified", "score", "stop_reason",
                  "path", "nodes", "stats"):
        assert getattr(back, field) == getattr(r, field), field
    assert back.to_json() == r.to_json()
    assert back.to_dot() == r.to_dot()
    assert back.training_examples() == r.training_examples()
    assert SearchResult.from_json(text.encode()).path == r.path  # bytes, as read from a binary file


def test_a_hand_written_minimal_result_is_accepted_and_drawn():
    text = json.dumps({
        "format_version": 1, "algorithm": "mcts", "problem_index": 0, "answer": "7", "answer_tokens": [7],
        "verified": True, "score": 1, "stop_reason": "verified", "path": [0, 2],
        "nodes": {"parent": [-1, 0, 0], "tokens": [[1], [5], [7]], "text": ["1", "5", "7"], "visits": [2, 1, 1],
                  "value": [0.5, 0, 1.0], "reward": [0, 0, 1], "path_score": [0, 0, 1],
                  "terminal": [False, True, True], "depth": [0, 1, 1], "prior": [1, 0.5, 0.5]},
        "stats": {k: 0 for k in ("tokens_generated", "tokens_prefilled", "expansions", "iterations", "model_calls",
                                 "wall_time", "peak_kv_bytes", "prefix_hit_rate")},
    })
    dot = SearchResult.from_json(text).to_dot()
    assert dot.count("->") == 2 and "n0 -> n2 [style=bold]" in dot and "n0 -> n1;" in dot


def _set(path, value):
    """A corruption that sets ``data[path[0]][path[1]]... = value``."""
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return apply


def _delete(path):
    def apply(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
    return apply


def _append_node(data):
    """One more entry in every per-node array but ``text``."""
    for name, array in data["nodes"].items():
        if name != "text":
            array.append(copy.deepcopy(array[-1]))


def _swap_root(data):
    data["nodes"]["parent"][0], data["nodes"]["parent"][1] = 0, -1


CORRUPTIONS = [
    ("no_version", _delete(["format_version"]), "missing format_version"),
    ("future_version", _set(["format_version"], 2), "unsupported format_version 2"),
    ("string_version", _set(["format_version"], "1"), "format_version must be an int"),
    ("missing_field", _delete(["path"]), "missing field(s) ['path']"),
    ("unknown_field", _set(["temperature"], 1.0), "unknown field(s) ['temperature']"),
    ("answer_not_str", _set(["answer"], 12), "answer must be a string, got 12"),
    ("verified_int", _set(["verified"], 1), "verified must be true or false, got 1"),
    ("score_str", _set(["score"], "high"), "score must be a number"),
    ("score_bool", _set(["score"], True), "score must be a number"),
    ("index_float", _set(["problem_index"], 0.0), "problem_index must be an int"),
    ("index_negative", _set(["problem_index"], -1), "problem_index must be an int >= 0"),
    ("tokens_not_ints", _set(["answer_tokens"], ["2"]), "answer_tokens must be a list of ints"),
    ("nodes_list", _set(["nodes"], []), "nodes must be an object"),
    ("stop_reason_unknown", _set(["stop_reason"], "tired"), "stop_reason must be one of max_iterations"),
    ("node_array_missing", _delete(["nodes", "depth"]), "nodes is missing the array(s) ['depth']"),
    ("node_array_unknown", _set(["nodes", "colour"], []), "nodes has unknown array(s) ['colour']"),
    ("node_array_not_list", _set(["nodes", "visits"], 3), "nodes.visits must be an array, got 3"),
    ("node_entry_type", _set(["nodes", "terminal", 1], "no"), "nodes.terminal[1] must be true or false"),
    ("node_tokens_type", _set(["nodes", "tokens", 1], 5), "nodes.tokens[1] must be a list of ints"),
    ("ragged_arrays", _append_node, "must all have one length"),
    ("empty_tree", lambda d: d["nodes"].update({k: [] for k in d["nodes"]}), "at least the root"),
    ("root_with_parent", _swap_root, "nodes.parent[0] must be -1"),
    ("parent_after_child", _set(["nodes", "parent", 1], 3), "nodes.parent[1] must be a node index in [0, 1)"),
    ("parent_out_of_range", _set(["nodes", "parent", 2], -5), "nodes.parent[2] must be a node index in [0, 2)"),
    ("depth_jump", _set(["nodes", "depth", 1], 5), "nodes.depth[1] must be its parent's depth + 1"),
    ("negative_visits", _set(["nodes", "visits", 0], -1), "nodes.visits[0] must be an int >= 0"),
    ("empty_path", _set(["path"], []), "path must be a list of node indices that starts at the root 0"),
    ("path_not_from_root", lambda d: d["path"].__setitem__(0, 1), "starts at the root 0"),
    ("path_out_of_range", lambda d: d["path"].append(10_000), "must be a node index in [0,"),
    ("path_skips_a_link", lambda d: d["path"].__setitem__(-1, 0), "must be a child of path["),
    ("answer_tokens_differ", lambda d: d["answer_tokens"].append(9), "answer_tokens must be the tokens of the path"),
    ("stats_missing", _delete(["stats", "expansions"]), "stats is missing 'expansions'"),
    ("stats_str", _set(["stats", "wall_time"], "fast"), "stats.wall_time must be a number"),
    ("stats_stop_reason", _set(["stats", "stop_reason"], "verified"), "stats.stop_reason must be the result's"),
]


@pytest.mark.parametrize("corrupt, fragment", [c[1:] for c in CORRUPTIONS], ids=[c[0] for c in CORRUPTIONS])
def test_corrupted_json_is_refused_by_name(payload, corrupt, fragment):
    data = copy.deepcopy(payload)
    corrupt(data)
    with pytest.raises(ValueError) as info:
        SearchResult.from_json(json.dumps(data))
    assert fragment in str(info.value)


@pytest.mark.parametrize("text, exc, fragment", [
    ('{"format_version": 1, "algorithm": "mc', ValueError, "not valid JSON (truncated or corrupted?)"),
    ("", ValueError, "not valid JSON"),
    (b"\xff\xfe{", ValueError, "not valid JSON"),
    ("[1, 2]", ValueError, "must be an object, got list"),
    ("null", ValueError, "must be an object, got NoneType"),
    (None, TypeError, "needs a JSON string, got NoneType"),
    ({"format_version": 1}, TypeError, "needs a JSON string, got dict"),
], ids=["truncated", "empty", "not_utf8", "array", "null", "none", "dict"])
def test_text_that_is_not_a_result_object(text, exc, fragment):
    with pytest.raises(exc) as info:
        SearchResult.from_json(text)
    assert fragment in str(info.value)
    err = info.value  # one message: no chained JSONDecodeError shown under it
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_the_truncation_point_is_reported(payload):
    text = json.dumps(payload)
    with pytest.raises(ValueError, match=r"char \d+"):
        SearchResult.from_json(text[: len(text) // 2])
