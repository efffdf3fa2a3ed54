"""One rule decides which levels run: the audit's default list drops what a capture lacks, a named
level that cannot run is one sentence, and build_features reads the same rule."""

from __future__ import annotations

import pytest
import torch

from logitleak.capture.source import Capture
from logitleak.errors import LogitleakError
from logitleak.levels.features import build_features
from logitleak.levels.plan import plan_levels, runnable_levels
from logitleak.levels.table import ANSWERS, API, API_IDS, ENDPOINT_LEVELS, HIDDEN, LENS, LEVELS, LOGITS, RESPONSE

LOCAL = {HIDDEN, LOGITS, LENS, ANSWERS}


def test_default_levels_drop_what_the_capture_lacks():
    got = plan_levels(LEVELS, LOCAL, explicit=False, generate=False)
    assert got == [lv for lv in LEVELS if lv not in ("vision", "projector", "image_residual") and
                   not lv.startswith("response_")]
    assert plan_levels(LEVELS, {HIDDEN, LOGITS}, explicit=False, generate=False) == [
        "residual", "pca", "logit_lens_topk", "logits", "topk_ids", "topk_logprobs", "topk_logits", "top1_prob"]


def test_an_endpoint_keeps_what_an_endpoint_returns():
    got = plan_levels(LEVELS, {API, API_IDS, RESPONSE}, explicit=True, generate=True, endpoint=True)
    assert got == list(ENDPOINT_LEVELS)
    with pytest.raises(LogitleakError, match=r"^Level 'topk_ids' cannot be computed from this capture"):
        plan_levels(LEVELS, {API}, explicit=True, generate=False, endpoint=True)


@pytest.mark.parametrize("level, contents, message", [
    ("tuned_lens_topk", {HIDDEN, LOGITS}, "Level 'tuned_lens_topk' needs a tuned lens"),
    ("logit_lens_answers", {HIDDEN, LOGITS}, "Level 'logit_lens_answers' needs answer_token_ids"),
    ("response_topk_ids", LOCAL, "Level 'response_topk_ids' needs a generated response"),
    ("vision", LOCAL, "Level 'vision' needs a vision-language model"),
    ("residual", {API, API_IDS}, "Level 'residual' cannot be computed from this capture"),
    ("nope", LOCAL, r"Unknown level 'nope'; choose from: vision, projector"),
])
def test_a_named_level_that_cannot_run_is_one_sentence(level, contents, message):
    with pytest.raises(LogitleakError, match="^" + message):
        plan_levels([level], contents)


def test_without_a_response_the_response_levels_go_and_asking_only_for_them_fails():
    assert plan_levels(["residual", "response_topk_ids"], LOCAL, generate=False) == ["residual"]
    with pytest.raises(LogitleakError, match="The response levels need a generated response"):
        plan_levels(["response_topk_ids"], LOCAL, generate=False)


def test_build_features_reads_the_same_rule():
    cap = Capture(topk_logprobs=torch.log_softmax(torch.randn(6, 5), -1).sort(-1, descending=True).values,
                  topk_ids=torch.arange(5).repeat(6, 1))
    assert runnable_levels(cap.contents) == ["topk_ids", "topk_logprobs", "top1_prob"]
    with pytest.raises(LogitleakError, match=r"^Level 'residual' cannot be computed from this capture"):
        build_features(cap, None, levels=["residual"], layers=[0], ks=[1])
    feats = build_features(cap, None, levels=["topk_ids", "topk_ids", "top1_prob"], layers=[], ks=[2])
    assert sorted(feats) == [("top1_prob", None, None), ("topk_ids", None, 2)]
