"""Dense training forward against the paged inference forward; training and evaluation runs."""

from __future__ import annotations

import random

import pytest
import torch

from ponder.models import DecoderLM, ModelConfig
from ponder.tasks import countdown as cd
from ponder.tasks import evaluation, train
from ponder.tasks.tokenizer import CharTokenizer
from ponder.tasks.traces import TraceSampler

TOK = CharTokenizer()
# fp32 on both paths; they differ only in summation order (SDPA vs the reference einsum
# attention, batched vs ragged matmuls). Measured max |diff| 2e-6 on logits of magnitude 3.5;
# 1e-4 leaves a wide margin and still catches a wrong position, mask or weight (O(0.1) moves).
FP32_TOL = dict(atol=1e-4, rtol=1e-4)


def _model(num_kv_heads: int, seed: int = 0) -> DecoderLM:
    cfg = ModelConfig(vocab_size=TOK.vocab_size, hidden_size=48, intermediate_size=80, num_layers=2,
                      num_heads=4, num_kv_heads=num_kv_heads, head_dim=12, max_position_embeddings=64,
                      tie_word_embeddings=num_kv_heads == 2)
    model = DecoderLM(cfg, value_head=True)
    g = torch.Generator().manual_seed(seed)
    # A larger spread than the training init makes attention far from uniform, so a wrong
    # mask or position would move the outputs visibly.
    model.init_weights(0.15, generator=g)
    with torch.no_grad():
        model.value_head.weight.normal_(0.0, 0.5, generator=g)
        model.value_head.norm_weight.uniform_(0.5, 1.5, generator=g)
        model.value_head.bias.fill_(0.1)
    return model.eval()


def _paged_hidden(model: DecoderLM, seqs, page_size: int = 4, seed: int = 0) -> torch.Tensor:
    """Prefill every sequence on shuffled pages; hidden rows of all tokens, concatenated."""
    need = [-(-len(s) // page_size) for s in seqs]
    free = list(range(sum(need) + 3))
    random.Random(seed).shuffle(free)
    tables, slots = [], []
    for s, n in zip(seqs, need):
        pages = [free.pop() for _ in range(n)]
        tables.append(pages + [-1] * (max(need) - n))
        slots += [pages[t // page_size] * page_size + t % page_size for t in range(len(s))]
    lens = [len(s) for s in seqs]
    kv = model.allocate_kv_cache(sum(need) + 3, page_size)
    return model(input_ids=torch.tensor([t for s in seqs for t in s]),
                 positions=torch.tensor([t for n in lens for t in range(n)]),
                 kv_cache=kv, slot_mapping=torch.tensor(slots), block_tables=torch.tensor(tables, dtype=torch.int32),
                 seq_lens=torch.tensor(lens, dtype=torch.int32),
                 query_indptr=torch.tensor([0] + lens, dtype=torch.int32).cumsum(0, dtype=torch.int32))


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_dense_forward_matches_paged_forward(num_kv_heads):
    model = _model(num_kv_heads)
    rng = random.Random(1)
    seqs = [[rng.randrange(TOK.vocab_size) for _ in range(n)] for n in (7, 13, 1, 20)]
    paged = _paged_hidden(model, seqs)  # [sum(n), C]
    padded = torch.full((len(seqs), 20), TOK.pad_token_id)
    for b, s in enumerate(seqs):
        padded[b, :len(s)] = torch.tensor(s)
    with torch.no_grad():
        dense = model.forward_dense(padded)  # [B, 20, C]
        rows = torch.cat([dense[b, :len(s)] for b, s in enumerate(seqs)])
        dense_logits = train.dense_logits(model, rows)
        dense_values = torch.sigmoid(train.dense_value_score(model, rows))
    torch.testing.assert_close(rows, paged, **FP32_TOL)
    torch.testing.assert_close(dense_logits, model.logits(paged), **FP32_TOL)
    torch.testing.assert_close(dense_values, model.value(paged), **FP32_TOL)
    assert dense_logits.std() > 0.5  # the comparison is not between near-constant outputs


def test_dense_forward_refuses_too_long_input():
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        _model(2).forward_dense(torch.zeros(1, 65, dtype=torch.int64))


def test_joint_loss_reaches_every_parameter():
    model = _model(2)
    batch = TraceSampler(TOK, seed=0, num_numbers=(3, 3), max_len=64).batch(6)
    loss, parts = train.joint_loss(model, batch, value_weight=1.0)
    loss.backward()
    assert parts["policy_loss"] > 0 and parts["value_loss"] > 0
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_joint_loss_weights_tokens_and_states():
    model = _model(2)
    batch = TraceSampler(TOK, seed=1, num_numbers=(3, 3), max_len=64, value_fraction=0.6, prior_weight=0.5).batch(8)
    with torch.no_grad():
        _, parts = train.joint_loss(model, batch, value_weight=2.0)
        hidden = model.forward_dense(batch["input_ids"])
        logp = torch.log_softmax(train.dense_logits(model, hidden), -1)
        mask = batch["targets"] != -100
        nll = -logp[mask].gather(1, batch["targets"][mask][:, None]).squeeze(1)
        w = batch["target_weights"][mask]
        scores = train.dense_value_score(model, hidden.reshape(-1, hidden.shape[-1])[batch["value_index"]])
        p = torch.sigmoid(scores)
        y = batch["value_labels"]
        bce = -(y * torch.log(p) + (1 - y) * torch.log(1 - p))
    assert w.min() == 0.5 and w.max() == 1.0
    # fp32 sums of a few hundred terms in a different order: 1e-5 relative is ample
    assert parts["policy_loss"] == pytest.approx(float((nll * w).sum() / w.sum()), rel=1e-5)
    assert parts["value_loss"] == pytest.approx(float((bce * batch["value_weights"]).sum()), rel=1e-5)
    assert parts["loss"] == pytest.approx(parts["policy_loss"] + 2.0 * parts["value_loss"], rel=1e-5)


def _dense_greedy(model, problem, max_new_tokens):
    ids = TOK.encode(problem.prompt(), add_bos=True)
    text = ""
    for _ in range(max_new_tokens):
        with torch.no_grad():
            tok = int(train.dense_logits(model, model.forward_dense(torch.tensor([ids]))[0, -1]).argmax())
        if tok == TOK.eos_token_id:
            break
        text += TOK.decode([tok])
        ids.append(tok)
        if text.endswith("\n") and cd.is_terminal(problem, text.split("\n")[:-1]):
            break
    return text


def test_greedy_decode_matches_a_dense_loop():
    model = _model(2, seed=3)
    problems = cd.generate(3, seed=0, num_numbers=3)
    texts = evaluation.greedy_decode(model, TOK, problems, max_new_tokens=12)
    assert texts == [_dense_greedy(model, p, 12) for p in problems]
    assert all(len(t) <= 12 for t in texts) and sum(map(len, texts)) >= 12  # not a vacuous match
    with pytest.raises(ValueError, match="max_new_tokens"):
        evaluation.greedy_decode(model, TOK, problems, max_new_tokens=0)


def test_value_accuracy_of_a_constant_head():
    model = _model(2)
    with torch.no_grad():
        model.value_head.weight.zero_()
        model.value_head.bias.fill_(5.0)  # every state predicted solvable
    sampler = TraceSampler(TOK, seed=2, num_numbers=(3, 3), value_fraction=1.0, max_len=64)
    result = evaluation.value_accuracy(model, [sampler.example() for _ in range(12)], batch_size=5)
    assert result["num_states"] > 12
    assert result["accuracy"] == pytest.approx(result["positive_fraction"])
    assert result["balanced_accuracy"] == pytest.approx(0.5)


def test_quick_training_lowers_the_loss_and_round_trips(tmp_path):
    metrics = train.train_countdown(tmp_path, steps=30, seed=0, quick=True, progress=False, evaluate=False)
    losses = metrics["loss_history"]
    assert len(losses) == 30 and metrics["seconds_per_step"] > 0
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5, losses
    assert {"config.json", "model.safetensors", "tokenizer.json", "metrics.json"} <= {p.name for p in tmp_path.iterdir()}
    model, tok = train.load_countdown(tmp_path)
    assert tok == TOK and model.value_head is not None
    assert model.config.eos_token_id == TOK.eos_token_id and model.config.hidden_size == train.QUICK.hidden_size
    batch = TraceSampler(TOK, seed=9, num_numbers=(3, 4)).batch(4)
    with torch.no_grad():
        _, parts = train.joint_loss(model, batch, 1.0)
    # the saved weights are the trained ones: their loss is near the end of training, far below the start
    assert parts["loss"] < losses[0] - 0.5


def test_training_is_reproducible(tmp_path):
    a = train.train_countdown(tmp_path / "a", steps=3, seed=5, quick=True, progress=False, evaluate=False)
    b = train.train_countdown(tmp_path / "b", steps=3, seed=5, quick=True, progress=False, evaluate=False)
    c = train.train_countdown(tmp_path / "c", steps=3, seed=6, quick=True, progress=False, evaluate=False)
    assert a["loss_history"] == b["loss_history"] != c["loss_history"]
    ma, _ = train.load_countdown(tmp_path / "a")
    mb, _ = train.load_countdown(tmp_path / "b")
    for (name, x), (_, y) in zip(ma.state_dict().items(), mb.state_dict().items()):
        assert torch.equal(x, y), name


def test_quick_run_with_evaluation_and_cli(tmp_path):
    cfg = train.QUICK.__class__(**{**train.QUICK.__dict__, "eval_problems": 3, "eval_value_examples": 6})
    metrics = train.train_countdown(tmp_path / "e", steps=2, quick=True, config=cfg, progress=False)
    ev = metrics["eval"]
    assert ev["num_problems_any"] == ev["num_problems_all"] == 3
    assert 0.0 <= ev["greedy_solve_rate_any"] <= 1.0 and ev["value_num_states"] >= 6
    assert train.main([str(tmp_path / "cli"), "--quick", "--steps", "2", "--no-progress", "--no-eval"]) == 0
    assert (tmp_path / "cli" / "model.safetensors").is_file()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(steps=0), ValueError, "steps must be a positive int"),
    (dict(batch_size=-2), ValueError, "batch_size"),
    (dict(seed="1"), TypeError, "seed must be an int"),
    (dict(num_threads=0), ValueError, "num_threads"),
    (dict(config="big"), TypeError, "config must be a TrainConfig"),
])
def test_train_rejects_bad_arguments(tmp_path, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        train.train_countdown(tmp_path, quick=True, progress=False, **kwargs)


def test_load_countdown_needs_a_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        train.load_countdown(tmp_path)
