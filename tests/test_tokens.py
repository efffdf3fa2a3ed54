"""The one home of the token rules: EOS ids from every place a model declares them, the pad id's
fallback, k within a vocabulary, and the API's top-k (checked against torch and against the
engine and the levels that read it)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from logitleak.errors import LogitleakError
from logitleak.models.tokens import api_logprobs, api_topk, check_k, eos_ids, pad_id


def fake(gen=None, config=None, tok=None, pad=None):
    return SimpleNamespace(model=SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=gen)),
                           config=SimpleNamespace(eos_token_id=config),
                           tokenizer=SimpleNamespace(eos_token_id=tok, pad_token_id=pad))


def test_eos_ids_are_the_union_of_generation_config_config_and_tokenizer():
    assert eos_ids(fake(gen=[2, 7], config=9, tok=2)) == {2, 7, 9}
    assert eos_ids(fake(config=(4, 5))) == {4, 5}
    assert eos_ids(fake()) == frozenset()
    assert eos_ids(fake(gen=True)) == frozenset()  # a bool is no token id


def test_pad_is_the_tokenizers_else_the_smallest_eos_else_zero():
    assert pad_id(fake(gen=[9, 3], pad=11)) == 11
    assert pad_id(fake(gen=[9, 3])) == 3
    assert pad_id(fake()) == 0


@pytest.mark.parametrize("k, message", [
    (0, "k=0 is not valid"), (-2, "k=-2 is not valid"), (2.5, "k=2.5 is not valid"), (True, "k=True is not valid"),
    (11, "more alternatives than the vocabulary has (10): k=11 is larger than 10; use k <= 10"),
])
def test_check_k_says_what_to_pass(k, message):
    with pytest.raises(LogitleakError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_k(k, 10)
    check_k(np.int64(10), 10)
    check_k(0, 10, at_least=0)


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 4), vocab=st.integers(2, 50), k=st.integers(1, 50), seed=st.integers(0, 2**31),
       temperature=st.sampled_from([1.0, 0.5, 2.0]), double=st.booleans())
def test_api_topk_is_log_softmax_then_sorted_topk(rows, vocab, k, seed, temperature, double):
    k = min(k, vocab)
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(seed)) * 5
    logits = logits.double() if double else logits
    values, ids = api_topk(logits, k, temperature)
    ref = torch.log_softmax(logits / temperature, -1)
    assert values.dtype == (torch.float64 if double else torch.float32)
    assert torch.equal(values, torch.gather(ref, 1, ids))
    assert torch.equal(torch.sort(values, descending=True).values, values)
    assert torch.allclose(values, torch.topk(ref, k).values)
    assert torch.equal(api_logprobs(logits.half().float()), api_logprobs(logits.half()))  # at least float32


def test_api_topk_refuses_k_over_the_vocabulary():
    with pytest.raises(LogitleakError, match=r"vocabulary has \(4\)"):
        api_topk(torch.zeros(1, 4), 5)
