import pytest

from miga.engine.prompts import PromptSchedule, parse_prompt_file
from miga.errors import MigaError


def counts(schedule, total):
    out = [0] * len(schedule.prompts)
    for f in range(total):
        out[schedule.index_at(f)] += 1
    return out


def test_single():
    s = PromptSchedule.single("a fox")
    assert s.starts == (0,) and s.prompt_at(10_000) == "a fox"


def test_even_split():
    s = PromptSchedule.even(["a", "b", "c"], 12)
    assert s.starts == (0, 4, 8)
    assert counts(s, 12) == [4, 4, 4]
    s = PromptSchedule.even(["a", "b", "c"], 10)  # M = ceil(10/3) = 4, last gets the rest
    assert s.starts == (0, 4, 8)
    assert counts(s, 10) == [4, 4, 2]
    with pytest.raises(MigaError, match="3 prompts but only 2 frames"):
        PromptSchedule.even(["a", "b", "c"], 2)
    with pytest.raises(MigaError):  # ceil(9/4)=3: the 4th prompt would start at frame 9
        PromptSchedule.even(list("abcd"), 9)


def test_index_at_boundaries():
    s = PromptSchedule((0, 4, 8), ("a", "b", "c"))
    assert [s.index_at(f) for f in (-5, -1, 0, 3, 4, 7, 8, 100)] == [0, 0, 0, 0, 1, 1, 2, 2]
    assert s.prompt_at(4) == "b" and s.prompt_at(3) == "a"


def test_to_latents():
    s = PromptSchedule((0, 5, 8, 16), ("a", "b", "c", "d"))
    # ceil: 0, 2, 2, 4 -> "b" and "c" collapse onto latent 2, the later one wins
    assert s.to_latents(4) == PromptSchedule((0, 2, 4), ("a", "c", "d"))
    s = PromptSchedule((0, 2), ("a", "b"))
    assert s.to_latents(4) == PromptSchedule((0, 1), ("a", "b"))
    assert PromptSchedule((0, 1, 4), ("a", "b", "c")).to_latents(4) == PromptSchedule((0, 1), ("a", "c"))
    assert s.to_latents(1) == s


@pytest.mark.parametrize(
    "starts,prompts,match",
    [
        ((), (), "no prompts"),
        ((0, 4), ("a",), "2 start frames but 1 prompts"),
        ((1,), ("a",), "frame 0"),
        ((0, 4, 4), ("a", "b", "c"), r"increase \(4 after 4\)"),
        ((0, 4), ("a", "  "), "prompt 2 .* empty"),
    ],
)
def test_schedule_validation(starts, prompts, match):
    with pytest.raises(MigaError, match=match):
        PromptSchedule(starts, prompts)


def test_parse_numbered():
    text = "# story\n0: a red fox in snow\n\n  120 : the fox runs into a forest  \n# end\n"
    s = parse_prompt_file(text, 200)
    assert s.starts == (0, 120)
    assert s.prompts == ("a red fox in snow", "the fox runs into a forest")


def test_parse_plain_even_and_colon_in_prompt():
    s = parse_prompt_file("a sign saying: stop\n\n# c\nthe fox runs: fast\n", 10)
    assert s.starts == (0, 5)
    assert s.prompts == ("a sign saying: stop", "the fox runs: fast")


@pytest.mark.parametrize(
    "text,total,match",
    [
        ("0: a\nb\n", 100, r"^prompts\.txt line 2: mixes"),
        ("a\n\n5: b\n", 100, r"^prompts\.txt line 3: mixes"),
        ("0: a\n10:   \n", 100, r"^prompts\.txt line 2: no prompt after '10:'"),
        ("0: a\n200: b\n120: c\n", 300, r"^prompts\.txt line 3: frame numbers must increase \(120 after 200\)"),
        ("0: a\n5: b\n5: c\n", 300, r"^prompts\.txt line 3: frame numbers must increase \(5 after 5\)"),
        ("# x\n3: a\n", 100, r"^prompts\.txt line 2: the first prompt must start at frame 0 \(got 3\)"),
        ("0: a\n100: b\n", 100, r"^prompts\.txt line 2: frame 100 is past the end"),
        ("0: a\n-5: b\n", 100, r"^prompts\.txt line 2: frame numbers must increase"),
        ("\n# only comments\n   \n", 100, r"^prompts\.txt: no prompts"),
        ("a\nb\nc\n", 2, r"^prompts\.txt: 3 prompts but only 2 frames"),
    ],
)
def test_parse_errors(text, total, match):
    with pytest.raises(MigaError, match=match) as info:
        parse_prompt_file(text, total, source="prompts.txt")
    assert "\n" not in str(info.value)
