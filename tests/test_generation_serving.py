"""A generator as its clients see it: OpenAI's official Python client against a real `lifecycle serve` of a tiny
registered bundle (chat completions streamed and not, completions, models, stop strings, usage, errors), a client
that goes away mid-stream, the prediction log's redacted prompts, and a swap of versions during a stream."""

import threading
import time
from pathlib import Path

import mlflow
import openai
import pytest
import requests
from conftest import as_args, make_texts, running_server, serve_command
from test_serving import metrics

from pipelines.tracking_server import free_port

pytestmark = pytest.mark.slow  # real servers end to end

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "instructions.yaml"
NAME = "tiny-generator"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
HELLO = [{"role": "user", "content": "hello there friend"}]
LONG = 2000  # tokens: a response of seconds, long enough to be under way when its client leaves or a swap comes


@pytest.fixture(scope="module")
def generator_bundle(tmp_path_factory):
    """A 4-block Llama with random weights, a byte-level BPE and ChatML turns, exported by stage 6's builder."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from components.config.schema_generation import GenerationConfig
    from components.deploy.generative_export import build_export

    root = tmp_path_factory.mktemp("generator")
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(make_texts(200)["text"], vocab_size=400, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(root / "model")
    torch.manual_seed(0)
    shape = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 16}
    ends = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = LlamaConfig(
        vocab_size=len(tokenizer), max_position_embeddings=4096, num_key_value_heads=8, **shape, **ends
    )
    LlamaForCausalLM(config).save_pretrained(root / "model")
    return build_export(str(root / "model"), root / "bundle", "fp32", GenerationConfig())


class BundleOnly(mlflow.pyfunc.PythonModel):
    """Registered for its artifact: the server downloads the bundle and never loads this."""

    def predict(self, context, model_input, params=None):
        return model_input


@pytest.fixture(scope="module")
def server(generator_bundle, tmp_path_factory):
    """`lifecycle serve` of models:/tiny-generator@champion (version 1 of 2 registered, the same bundle)."""
    from components.registry import promote

    root = tmp_path_factory.mktemp("serving")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("generation-serving")
    for _ in range(2):
        with mlflow.start_run():
            mlflow.pyfunc.log_model(
                name="model",
                python_model=BundleOnly(),
                artifacts={"bundle": str(generator_bundle)},
                registered_model_name=NAME,
                pip_requirements=[],
            )
    for version in ("1", "2"):
        mlflow.MlflowClient().set_model_version_tag(NAME, version, "task", "generation")
    promote(NAME, "1")
    port = free_port(3)
    settings = [
        f"work_dir={root / 'work'}",
        f"tracking.registered_model={NAME}",
        "serve.follow_seconds=0.5",
        "serve.log_flush_seconds=0.3",
        f"storage.predictions={root / 'predictions'}",
        "serve.max_prompt_tokens=60",
        f"serve.max_tokens={LONG}",
        "serve.max_waiting=1",
        "serve.max_request_bytes=4096",
    ]
    command = serve_command(CONFIG, port, "--model", f"models:/{NAME}@champion", *as_args(settings))
    with running_server(command, port, root, uri) as (url, process):
        yield url, root, process


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="not-needed", max_retries=0, timeout=60)


def logged(root: Path, count: int = 1, **where):
    """The prediction log's records matching `where`, once at least `count` are written."""
    from monitoring.prediction_log import read_predictions

    deadline = time.monotonic() + 20
    while True:
        frame = read_predictions(str(root / "predictions"))
        for column, value in where.items():
            frame = frame[frame[column] == value] if not frame.empty else frame
        if len(frame) >= count:
            return frame
        assert time.monotonic() < deadline, f"{len(frame)} records of {where} logged, {count} expected"
        time.sleep(0.2)


def test_the_server_says_where_its_openai_routes_are(server):
    _, root, _ = server
    printed = (root / "server.out").read_text()
    assert "POST /v1/chat/completions, POST /v1/completions, GET /v1/models (OpenAI's API)" in printed, printed


def test_chat_completions_streamed_and_not_give_the_same_text_usage_and_finish_reasons(server):
    import json

    url, _, _ = server
    openai_client = client(url)
    whole = openai_client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=12, temperature=0)
    choice = whole.choices[0]
    assert whole.id.startswith("chatcmpl-") and whole.object == "chat.completion" and whole.system_fingerprint == "1"
    assert choice.finish_reason == "length" and choice.message.role == "assistant" and len(choice.message.content) > 8
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens > 3
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 12

    chunks = list(
        openai_client.chat.completions.create(
            model=NAME,
            messages=HELLO,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == choice.message.content
    assert chunks[-2].choices[0].finish_reason == "length" and chunks[-1].choices == []
    counts = lambda usage: (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)  # noqa: E731
    assert counts(chunks[-1].usage) == counts(whole.usage) and len({c.id for c in chunks}) == 1

    text = choice.message.content
    stop = text[5:8]
    for stream in (False, True):
        answer = openai_client.chat.completions.create(
            model=NAME, messages=HELLO, max_tokens=12, temperature=0, stop=[stop, "never appears"], stream=stream
        )
        parts = [c.choices[0] for c in answer] if stream else answer.choices
        content = "".join((p.delta.content or "") if stream else p.message.content for p in parts)
        assert content == text[: text.index(stop)] and parts[-1].finish_reason == "stop"

    body = {"model": NAME, "messages": HELLO, "max_tokens": 3, "temperature": 0, "stream": True}
    raw = requests.post(f"{url}/v1/chat/completions", json=body, timeout=30)
    events = [line for line in raw.text.split("\n\n") if line]
    assert raw.headers["content-type"].startswith("text/event-stream") and events[-1] == "data: [DONE]"
    assert json.loads(events[0].removeprefix("data: "))["object"] == "chat.completion.chunk"


def test_completions_answer_a_prompt_as_one_user_message_and_models_lists_the_served_one(server):
    url, _, _ = server
    openai_client = client(url)
    chat = openai_client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=10, temperature=0)
    completion = openai_client.completions.create(model=NAME, prompt=HELLO[0]["content"], max_tokens=10, temperature=0)
    assert completion.object == "text_completion" and completion.choices[0].text == chat.choices[0].message.content
    streamed = openai_client.completions.create(
        model=NAME, prompt=HELLO[0]["content"], max_tokens=10, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text
    assert [m.id for m in openai_client.models.list()] == [NAME]


def test_bad_requests_raise_the_openai_client_s_errors(server):
    url, _, _ = server
    openai_client = client(url)
    with pytest.raises(openai.NotFoundError) as unknown:
        openai_client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert unknown.value.code == "model_not_found"
    for kwargs, message in (
        ({"messages": HELLO, "n": 2}, "n: 2 choices"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": [{"role": "user", "content": "free prize " * 40}]}, "at most 60 (serve.max_prompt_tokens)"),
        ({"messages": HELLO, "temperature": 3}, "temperature"),
    ):
        with pytest.raises(openai.BadRequestError, match=message.replace("(", r"\(").replace(")", r"\)")):
            openai_client.chat.completions.create(model=NAME, **kwargs)
    with pytest.raises(openai.APIStatusError) as too_large:
        openai_client.completions.create(model=NAME, prompt="x" * 5000)
    assert too_large.value.status_code == 413 and "serve.max_request_bytes" in too_large.value.message


def test_metrics_count_tokens_finish_reasons_and_time_to_first_token_per_version(server):
    url, _, _ = server
    labels = f"'model_name': '{NAME}', 'model_version': '1'"
    before = metrics(url)
    client(url).chat.completions.create(model=NAME, messages=HELLO, max_tokens=7, temperature=0)
    after = metrics(url)
    grew = lambda name: after[name] - before.get(name, 0)  # noqa: E731
    assert grew(f"lifecycle_completion_tokens_total{{{labels}}}") == 7
    assert grew(f"lifecycle_prompt_tokens_total{{{labels}}}") > 3
    assert grew(f"lifecycle_responses_total{{'finish_reason': 'length', {labels}}}") == 1
    assert grew(f"lifecycle_time_to_first_token_seconds_count{{{labels}}}") == 1
    assert grew(f"lifecycle_tokens_per_second_count{{{labels}}}") == 1


def test_the_open_inference_protocol_s_generate_endpoints(server):
    import json

    url, _, _ = server
    body = {
        "inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [1], "data": [HELLO[0]["content"]]}],
        "parameters": {"max_tokens": 10, "temperature": 0},
    }
    whole = requests.post(f"{url}/v2/models/{NAME}/generate", json=body, timeout=30).json()
    chat = client(url).chat.completions.create(model=NAME, messages=HELLO, max_tokens=10, temperature=0)
    assert whole["outputs"][0]["data"] == [chat.choices[0].message.content] and whole["model_version"] == "1"
    assert whole["parameters"]["finish_reason"] == "length" and whole["parameters"]["completion_tokens"] == 10
    streamed = requests.post(f"{url}/v2/models/{NAME}/generate_stream", json=body, timeout=30).text
    events = [json.loads(e.removeprefix("data: ")) for e in streamed.split("\n\n") if e]
    assert "".join(e["outputs"][0]["data"][0] for e in events) == chat.choices[0].message.content
    assert events[-1]["parameters"]["finish_reason"] == "length"
    refused = requests.post(f"{url}/v2/models/{NAME}/generate", json={"inputs": []}, timeout=30)
    assert refused.status_code == 400 and "'prompt'" in refused.json()["error"]


def test_a_full_waiting_room_answers_429_and_the_rest_are_answered(server):
    """serve.max_waiting=1: beside the engine's slots, one request waits; the others get RateLimitError."""
    url, _, _ = server
    openai_client = client(url)

    def ask(i: int) -> str:
        try:
            prompt = [{"role": "user", "content": f"hello {i}"}]
            return (
                openai_client.chat.completions.create(model=NAME, messages=prompt, max_tokens=200)
                .choices[0]
                .finish_reason
            )
        except openai.RateLimitError:
            return "429"

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(ask, range(48)))
    assert "429" in answers and set(answers) <= {"429", "length", "stop"}, answers
    assert openai_client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=2).choices[0].finish_reason


def test_a_client_that_leaves_mid_stream_cancels_its_generation_and_the_server_serves_on(server):
    url, root, _ = server
    personal = "write to jane.doe@example.com about the prize"
    stream = client(url).chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": personal}], max_tokens=LONG, temperature=0, stream=True
    )
    first = next(iter(stream))
    stream.close()  # gone, after its first chunk
    record = logged(root, response_id=first.id).iloc[0]
    assert record["finish_reason"] == "cancelled" and record["completion_tokens"] < LONG
    assert record["text"] == "write to <EMAIL_ADDRESS> about the prize"
    assert not any("jane.doe" in p.read_text() for p in (root / "predictions").iterdir())
    answer = client(url).chat.completions.create(model=NAME, messages=HELLO, max_tokens=4)
    assert answer.choices[0].finish_reason == "length"
    assert logged(root, response_id=answer.id).iloc[0]["completion_tokens"] == 4


def test_a_swap_during_a_stream_finishes_it_on_its_version_and_the_next_request_gets_the_new_one(server):
    from components.registry import promote

    url, root, process = server
    openai_client = client(url)
    stream = openai_client.chat.completions.create(
        model=NAME, messages=HELLO, max_tokens=LONG, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = iter(stream)
    started = next(chunks)
    assert started.system_fingerprint == "1"
    promote(NAME, "2")
    errors, answers, swapped = [], [], threading.Event()

    def ask_until_swapped() -> None:  # requests through the swap: none may fail
        while not swapped.is_set():
            try:
                answers.append(openai_client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=2))
            except openai.APIError as err:
                errors.append(err)

    asker = threading.Thread(target=ask_until_swapped)
    asker.start()
    champion = f"lifecycle_served_version{{'model_name': '{NAME}', 'model_version': '2', 'role': 'champion'}}"
    deadline = time.monotonic() + 30
    while metrics(url).get(champion) != 1:
        assert time.monotonic() < deadline, "version 2 was not swapped in within 30 s"
        time.sleep(0.1)
    after = openai_client.chat.completions.create(model=NAME, messages=HELLO, max_tokens=2)
    answered_at = time.time()
    swapped.set()
    asker.join()
    rest = list(chunks)
    assert not errors and after.system_fingerprint == "2", errors
    assert {c.system_fingerprint for c in rest} == {"1"} and rest[-1].usage.completion_tokens == LONG
    assert rest[-2].choices[0].finish_reason == "length"
    record = logged(root, response_id=started.id).iloc[0]
    # Version 1 was still generating when version 2 answered: its generator outlived the swap.
    assert record["model_version"] == "1" and record["timestamp"].timestamp() > answered_at, record
    assert process.poll() is None
