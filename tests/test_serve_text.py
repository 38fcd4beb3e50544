"""Committed tokens to sendable text (d3llm.serve.text): stop strings split anywhere, incomplete UTF-8, max_tokens,
and the same text whether the tokens arrive at once or in pieces."""

import itertools

import pytest

from d3llm.assets import default_model_path
from d3llm.models import load_tokenizer
from d3llm.serve.text import REPLACEMENT, TextStream


class ByteTokenizer:
    """Token i is the byte i: decoding a partial UTF-8 sequence gives U+FFFD, as byte-level BPE tokenizers do."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def run(stream: TextStream, pieces: list[list[int]], finished: bool = True) -> list[str]:
    out = [stream.push(p) for p in pieces]
    if finished:
        out.append(stream.close())
    return out


def splits(ids: list[int], cuts: tuple[int, ...]) -> list[list[int]]:
    bounds = [0, *cuts, len(ids)]
    return [ids[a:b] for a, b in zip(bounds, bounds[1:])]


TEXT = "Next 14 + 16 = 30.\n#### 30 é😀 end"
IDS = list(TEXT.encode())


@pytest.mark.parametrize("stop", [["16 ="], ["#### 3"], ["😀"], ["0.\n#", "end"], ["nothing", " = 3"]])
def test_stop_strings_are_found_however_the_tokens_are_split(stop):
    whole = TextStream(ByteTokenizer(), stop)
    expected = "".join(run(whole, [IDS]))
    first = min((TEXT.find(s) + len(s), TEXT.find(s)) for s in stop if s in TEXT)
    assert expected == TEXT[: first[1]] and whole.finish_reason == "stop"
    for cuts in itertools.combinations(range(1, len(IDS)), 2):  # every way of splitting into three events
        stream = TextStream(ByteTokenizer(), stop)
        deltas = run(stream, splits(IDS, cuts))
        assert "".join(deltas) == expected, cuts
        assert stream.finish_reason == "stop"
        assert all(REPLACEMENT not in d for d in deltas)
        sent = ""
        for d in deltas:  # no delta ever holds the start of a stop string that later text then completes
            sent += d
            assert not any(s in sent for s in stop)


def test_the_stop_string_that_ends_first_wins_whatever_the_split():
    stop = ["abcd", "c"]  # "c" ends before "abcd": the text ends before "c" in every arrival order
    for cuts in itertools.combinations(range(1, 6), 2):
        stream = TextStream(ByteTokenizer(), stop)
        assert "".join(run(stream, splits(list(b"xabcde"), cuts))) == "xab"


def test_incomplete_utf8_is_held_back_until_complete():
    stream = TextStream(ByteTokenizer())
    smile = list("😀".encode())
    assert stream.push(list(b"ok ")) == "ok "
    assert stream.push(smile[:2]) == ""  # half a character: nothing to send
    assert stream.push(smile[2:3]) == ""
    assert stream.push(smile[3:] + list(b"!")) == "😀!"
    assert stream.push(smile[:1]) == ""
    assert stream.close() == ""  # the output ends inside a character: the fragment is dropped, never sent
    assert stream.sent == "ok 😀!"


def test_no_stop_strings_streams_everything():
    for cuts in itertools.combinations(range(1, len(IDS)), 1):
        stream = TextStream(ByteTokenizer())
        assert "".join(run(stream, splits(IDS, cuts))) == TEXT
        assert stream.finish_reason is None and stream.completion_tokens() == len(IDS)


def test_max_tokens_cuts_and_finishes_with_length():
    stream = TextStream(ByteTokenizer(), max_tokens=7)
    assert stream.push(list(b"abc")) == "abc"
    assert stream.push(list(b"defghij")) == "defg"
    assert stream.finish_reason == "length" and stream.tokens == list(b"abcdefg")
    assert stream.push(list(b"k")) == "" and stream.close() == ""


def test_held_back_text_is_released_when_the_output_ends():
    stream = TextStream(ByteTokenizer(), ["#### 9"])
    assert stream.push(list(b"x = 3\n####")) == "x = 3\n"  # "####" may begin the stop string
    assert stream.push(list(b" 3")) == "#### 3"
    assert stream.push(list(b"0\n###")) == "0\n"
    assert stream.close() == "###"
    assert stream.finish_reason is None


def test_completion_tokens_count_up_to_the_stop_string():
    stream = TextStream(ByteTokenizer(), ["16"])
    run(stream, [IDS])
    assert stream.completion_tokens() == TEXT.index("16") + 2


def test_the_teachers_tokens_stream_into_the_decoded_text():
    tokenizer = load_tokenizer(default_model_path())
    ids = tokenizer.encode("Next 58 - 44 = 14.\nNext 14 + 16 = 30.\n#### 30", add_special_tokens=False)
    ids += [tokenizer.convert_tokens_to_ids("<|eot_id|>")]  # special tokens are not text
    full = tokenizer.decode(ids, skip_special_tokens=True)
    for cut in range(1, len(ids)):
        stream = TextStream(tokenizer, ["16 ="])
        text = "".join(run(stream, [ids[:cut], ids[cut:]]))
        assert text == full[: full.index("16 =")]
        plain = TextStream(tokenizer)
        assert "".join(run(plain, [ids[:cut], ids[cut:]])) == full


def test_empty_stop_strings_are_refused():
    with pytest.raises(ValueError):
        TextStream(ByteTokenizer(), [""])
