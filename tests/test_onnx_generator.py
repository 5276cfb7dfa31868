"""A served response ends before its stop string, and a streaming client never receives any part of one: the text
is held back only while it could still become a stop string. The engine's thread ends a cancelled request, refuses
past its waiting room, survives a receiver that fails, and a closed generator refuses new requests."""

import time

import pytest

from components.deploy.onnx_generator import Completion, Request, Sampling

pytest_plugins = ["test_generation_data"]  # its chat_llama fixture


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


@pytest.fixture(scope="module")
def generator(chat_llama, tmp_path_factory):
    from components.config.schema_generation import GenerationConfig
    from components.deploy.generative_export import build_export
    from components.deploy.onnx_generator import OnnxGenerator

    bundle = build_export(str(chat_llama), tmp_path_factory.mktemp("engine") / "bundle", "fp32", GenerationConfig())
    generator = OnnxGenerator(bundle, max_waiting=1)
    yield generator
    generator.close()


def finished(request_deliveries: list) -> Completion:
    """The Completion a request delivers last, waited for."""
    for _ in range(600):
        if request_deliveries and isinstance(request_deliveries[-1], Completion):
            return request_deliveries[-1]
        time.sleep(0.05)
    raise AssertionError("the generation never finished")


@pytest.mark.slow
def test_the_engine_ends_a_cancelled_request_refuses_past_its_waiting_room_and_goes_on_serving(generator):
    from components.deploy.onnx_generator import GeneratorBusy

    ids = generator.prompt_ids([{"role": "user", "content": "Say hello."}])
    long = Sampling(max_tokens=100_000)
    runs = [[] for _ in range(generator.slots + 1)]
    requests = [generator.submit(ids, long, run.append) for run in runs]
    with pytest.raises(GeneratorBusy):
        generator.submit(ids, long, [].append)
    for request in requests:
        request.cancel()
    assert {finished(run).finish_reason for run in runs} == {"cancelled"}
    (done,) = generator.complete([[{"role": "user", "content": "Say hello."}]], Sampling(max_tokens=3))
    assert done.finish_reason in ("stop", "length") and done.completion_tokens <= 3


@pytest.mark.slow
def test_a_receiver_that_fails_cancels_its_own_request_not_the_engine(generator):
    def closed_loop(item):
        raise RuntimeError("Event loop is closed")

    generator.submit(generator.prompt_ids([{"role": "user", "content": "Hi."}]), Sampling(max_tokens=50), closed_loop)
    (done,) = generator.complete([[{"role": "user", "content": "Say hello."}]], Sampling(max_tokens=3))
    assert done.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_a_closed_generator_refuses_new_requests(chat_llama, generator):
    from components.deploy.onnx_generator import GeneratorClosed, OnnxGenerator

    closing = OnnxGenerator(generator.bundle_dir)
    closing.close()
    with pytest.raises(GeneratorClosed):
        closing.submit([1, 2], Sampling(max_tokens=2), [].append)
