"""Language-consistency reward (table tests) and the bilingual arithmetic corpus styles."""

import random

import pytest

from r1lab.models import build_tiny_tokenizer
from r1lab.rewards import get_reward, language_consistency_reward
from r1lab.rewards.rule import extract_answer
from r1lab.tasks import verify
from r1lab.tasks.arithmetic import EXTRA_TOKENS, REASONING_WORDS, ArithmeticTask


@pytest.mark.parametrize("completion, example, expected", [
    ("<think>sum 1+2=3 so 3</think><answer>3</answer>", {}, 1.0),                      # default target: en
    ("<think>suma 1+2=3 asi 3</think><answer>3</answer>", {}, 0.0),
    ("<think>suma 1+2=3 asi 3</think><answer>3</answer>", {"language": "es"}, 1.0),
    ("<think>sum 5+8=13 luego 4+1+1=6 then 2+8=10 so 1063</think>", {}, 0.75),       # 3 of 4 words English
    ("<think>SUM 1+1=2 So 2</think>", {}, 1.0),                                       # case does not matter
    ("<think>sum 1 hello so</think>", {}, 1.0),                                       # unknown words do not count
    ("<think>1+2=3</think><answer>3</answer>", {}, None),                              # no words
    ("<answer>3</answer> sum so", {}, None),                                            # no think block
    ("<think>we add 三 and 四</think>", {"language": "latin"}, 0.6),                    # scripts: 3 latin, 2 CJK
    ("<think>we add 三 and 四</think>", {"language": "cjk"}, 0.4),
    ("<think>先加再进位</think>", {"language": "cjk"}, 1.0),
])
def test_language_consistency_table(completion, example, expected):
    result = language_consistency_reward(completion, example)
    assert result == (None if expected is None else pytest.approx(expected))


def test_latin_consistency_reward_for_real_text():
    latin = get_reward("language_consistency_latin")
    assert latin("<think>we add 三 and 四</think><answer>7</answer>", {"language": "en"}) == pytest.approx(0.6)
    assert latin("<think>first carry the one</think>", {}) == 1.0
    assert latin("<answer>7</answer>", {}) is None


def test_language_reward_is_registered_and_rejects_unknown_languages():
    assert get_reward("language_consistency") is language_consistency_reward
    with pytest.raises(ValueError, match="unknown language 'fr'"):
        language_consistency_reward("<think>so</think>", {"language": "fr"})


@pytest.mark.parametrize("ops", ["+", "-", "*"])
def test_worked_words_styles_read_as_claimed_and_verify(ops):
    task = ArithmeticTask(digits=3, ops=ops)
    rng = random.Random(0)
    for example in task.examples("train", 30):
        english = task.corpus_document(example, rng, "worked_words")
        mixed = task.corpus_document(example, rng, "worked_mixed")
        for text in (english, mixed):
            assert verify(extract_answer(text), example), text
            assert text.startswith("<think>") and text.endswith("</answer>")
        assert language_consistency_reward(english, {}) == 1.0
        assert 0.0 < language_consistency_reward(mixed, {}) < 1.0, mixed
        words = set(english.split())
        assert words & set(REASONING_WORDS["en"]) and not words & set(REASONING_WORDS["es"])


def test_worked_words_example_and_old_styles_unchanged():
    task = ArithmeticTask(digits=3, ops="+")
    example = task.make_example(347, "+", 589)
    assert task.corpus_document(example, random.Random(0), "worked_words") == (
        "<think>sum 7+9=16 then 4+8+1=13 then 3+5+1=9 so 936</think><answer>936</answer>")
    assert task.corpus_document(example, random.Random(0), "worked") == (
        "<think>7+9=16 4+8+1=13 3+5+1=9</think><answer>936</answer>")


def test_reasoning_words_are_single_tokens():
    tokenizer = build_tiny_tokenizer(ArithmeticTask.extra_tokens)
    assert ArithmeticTask.extra_tokens == EXTRA_TOKENS
    for word in EXTRA_TOKENS:
        assert len(tokenizer.encode(word, add_special_tokens=False)) == 1, word
