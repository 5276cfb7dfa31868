"""A served response ends before its stop string, and a streaming client never receives any part of one: the text
is held back only while it could still become a stop string."""

from components.deploy.onnx_generator import Completion, Request, Sampling


def stream(pieces: list[str], stop: tuple[str, ...]) -> tuple[list[str], Completion]:
    delivered: list = []
    request = Request([1, 2, 3], Sampling(max_tokens=50, stop=stop), delivered.append)
    for piece in pieces:
        request.tokens.append(0)
        if request.add(piece):
            break
    done = request.finish("stop" if request.stopped_at is not None else "length")
    return delivered[:-1], done


def test_the_response_ends_before_a_stop_string_split_across_tokens():
    sent, done = stream(["Red,", " Blue", "\n\n", "#", "## Green"], stop=("\n\n###",))
    assert done.text == "Red, Blue" and done.finish_reason == "stop"
    assert "".join(sent) == "Red, Blue"
    assert not any("#" in piece or "\n" in piece for piece in sent)


def test_text_held_back_for_a_possible_stop_string_is_sent_when_none_follows():
    sent, done = stream(["one\n", "\n", "two"], stop=("\n\n###",))
    assert done.text == "one\n\ntwo" and done.finish_reason == "length"
    assert "".join(sent) == "one\n\ntwo"
    assert sent[0] == "one"  # the newline waits: it could begin the stop string


def test_the_earliest_of_several_stop_strings_wins():
    _, done = stream(["alpha beta gamma"], stop=("gamma", "beta"))
    assert done.text == "alpha "


def test_without_stop_strings_every_piece_is_sent_as_it_comes():
    sent, done = stream(["a", "b", "c"], stop=())
    assert sent == ["a", "b", "c"] and done.completion_tokens == 3 and done.prompt_tokens == 3
