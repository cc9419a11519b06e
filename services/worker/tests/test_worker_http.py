"""The real worker process over HTTP: ``python -m cormorant.worker`` serving each example.

Every worker is started once for the module (in parallel, each on its own free port) and
polled on ``/healthz`` until ready; the tests then speak plain HTTP to it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"
SRC = [ROOT / "libs/common/src", ROOT / "libs/sdk/src", ROOT / "services/worker/src"]
# A bound on readiness, not a timing claim: nine workers import scikit-learn at once, and on two
# loaded cores that has taken longer than 45 s.
START_TIMEOUT = 150.0

TOOLBOX = """\
import os
import threading
import time

# Read at import: --env values must be exported before the model's module runs.
FLAG_AT_IMPORT = os.environ.get("CORMORANT_TEST_FLAG")


def predict(action, *args):
    if action == "raise":
        raise ValueError("boom: " + str(args[0]))
    if action == "env":
        return {"now": os.environ.get(args[0]), "at_import": FLAG_AT_IMPORT}
    if action == "sleep":
        time.sleep(args[0])
        return threading.current_thread().name
    if action == "cwd":
        return os.getcwd()
    return action
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p) for p in SRC] + [env.get("PYTHONPATH", "")])
    env["CORMORANT_WORKER_PUBLISH_METRICS"] = "false"
    # A stack running on this machine must not receive these tests' predictions.
    env["CORMORANT_WORKER_LOG_PREDICTIONS"] = "false"
    env["CORMORANT_LOG_JSON"] = "false"
    return env


def worker_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cormorant.worker", *args]


@dataclass
class Worker:
    """One running worker process and where it listens."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def health(self) -> httpx.Response | None:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=2)
        except httpx.TransportError:
            return None

    def wait(self, *, ready: bool = True) -> httpx.Response:
        """Poll /healthz until it answers 200 (or, with ready=False, answers at all)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            response = self.health()
            if response is not None and (response.status_code == 200 or not ready):
                return response
            time.sleep(0.05)
        pytest.fail(f"{self.name} not ready within {START_TIMEOUT} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def predict(self, input_params: Any, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.url}/predict", json={"input_params": input_params}, **kwargs)


def spawn(name: str, logs: Path, *args: str) -> Worker:
    port = free_port()
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            worker_command(*args, "--port", str(port), "--server", "workers=1"),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=child_env(),
            cwd=ROOT,
        )
    return Worker(name, proc, f"http://127.0.0.1:{port}", log)


def example(name: str) -> list[str]:
    return ["--source", str(EXAMPLES / name), "--file", "predict.py", "--function", "predict"]


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Worker]]:
    """Every worker of this module, started together and ready."""
    logs = tmp_path_factory.mktemp("logs")
    toolbox = tmp_path_factory.mktemp("toolbox")
    (toolbox / "toolbox.py").write_text(TOOLBOX)
    broken = tmp_path_factory.mktemp("broken")
    (broken / "model.py").write_text("def predict_proba(x):\n    return x\n")
    toolbox_args = ["--source", str(toolbox), "--file", "toolbox.py"]
    toolbox_args += ["--env", "CORMORANT_TEST_FLAG=on", "--server", "threads=4"]
    started = [
        spawn("sentiment", logs, *example("sentiment")),
        spawn("regression", logs, *example("regression")),
        spawn("digits", logs, *example("digits"), "--accepts-file"),
        spawn("multi_args", logs, *example("multi_args")),
        spawn("bytes_echo", logs, *example("bytes_echo")),
        spawn("streaming", logs, *example("streaming")),
        spawn("toolbox", logs, *toolbox_args),
        spawn("broken", logs, "--source", str(broken), "--file", "model.py"),
    ]
    by_name = {worker.name: worker for worker in started}
    try:
        for worker in started:
            worker.wait(ready=worker.name != "broken")
        yield by_name
    finally:
        # Signal every worker first so their graceful shutdowns overlap.
        for worker in started:
            worker.proc.terminate()
        for worker in started:
            worker.stop()


def test_sentiment_takes_a_string_as_one_argument(workers: dict[str, Worker]) -> None:
    """A string input reaches predict as one argument; the label and score come back."""
    response = workers["sentiment"].predict("The food was delicious and the staff were lovely")
    assert response.status_code == 200, response.text
    prediction = response.json()["prediction"]
    assert prediction["label"] == "positive"
    assert 0.5 < prediction["score"] <= 1.0
    negative = workers["sentiment"].predict("The service was slow and the room was dirty")
    assert negative.json()["prediction"]["label"] == "negative"


def test_regression_takes_an_array_and_returns_a_number(workers: dict[str, Worker]) -> None:
    """``[[f1..f10]]`` is spread into one argument, a row of features; a number comes back."""
    row = [0.038, 0.051, 0.062, 0.022, -0.044, -0.035, -0.043, -0.003, 0.020, -0.018]
    one = workers["regression"].predict([row])
    assert one.status_code == 200, one.text
    assert isinstance(one.json()["prediction"], float)
    several = workers["regression"].predict([[row, row]])
    assert several.json()["prediction"] == [one.json()["prediction"]] * 2


def test_digits_reads_an_uploaded_png(workers: dict[str, Worker]) -> None:
    """A Base64 PNG becomes a temporary file whose path predict reads; each digit is read."""
    for digit in (0, 3, 7):
        png = (EXAMPLES / "digits" / "samples" / f"digit_{digit}.png").read_bytes()
        response = workers["digits"].predict(base64.b64encode(png).decode())
        assert response.status_code == 200, response.text
        assert response.json()["prediction"]["digit"] == digit


def test_bad_base64_is_a_400_and_the_next_request_succeeds(workers: dict[str, Worker]) -> None:
    """Input that is not Base64 gets a clear 400; the replica keeps serving."""
    bad = workers["digits"].predict("this is not base64!")
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "invalid_input"
    assert "Base64" in bad.json()["error"]["message"]
    not_a_string = workers["digits"].predict([1, 2])
    assert not_a_string.status_code == 400
    png = (EXAMPLES / "digits" / "samples" / "digit_5.png").read_bytes()
    good = workers["digits"].predict(base64.b64encode(png).decode())
    assert good.status_code == 200
    assert good.json()["prediction"]["digit"] == 5


def test_multi_args_spreads_a_list_as_positional_arguments(workers: dict[str, Worker]) -> None:
    """``[a, b, c]`` calls ``predict(a, b, c)``."""
    response = workers["multi_args"].predict([5.1, 1.4, 0.2])
    assert response.status_code == 200, response.text
    assert response.json()["prediction"]["species"] == "setosa"
    # Arguments that do not bind are the caller's mistake: 400, naming the signature.
    wrong = workers["multi_args"].predict([5.1, 1.4])
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "arguments_do_not_fit"
    assert "does not fit predict(" in wrong.json()["error"]["message"]


def test_raw_bytes_body_reaches_predict_as_bytes(workers: dict[str, Worker]) -> None:
    """An application/octet-stream body is passed to predict as bytes, as Kafka would."""
    response = httpx.post(
        f"{workers['bytes_echo'].url}/predict",
        content=b'{"values": [1, 2, 6]}',
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["prediction"] == {"count": 3, "mean": 3.0, "max": 6.0}


def test_stream_chunks_arrive_while_the_generator_runs(workers: dict[str, Worker]) -> None:
    """Each yielded chunk reaches the client as it is produced (NDJSON), not all at the end."""
    delay, words = 0.3, "one two three four five six"
    arrivals: list[float] = []
    chunks: list[Any] = []
    body = {"input_params": [words, delay]}
    with httpx.stream("POST", f"{workers['streaming'].url}/predict", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                chunks.append(json.loads(line)["prediction"])
    assert [c["token"] for c in chunks] == words.split()
    # Buffered output would deliver every line at once; streamed, they are ~delay apart.
    assert arrivals[-1] - arrivals[0] > 0.6 * delay * (len(chunks) - 1)


def test_stream_as_server_sent_events(workers: dict[str, Worker]) -> None:
    """A client that accepts text/event-stream gets each chunk as an SSE data event."""
    response = httpx.post(
        f"{workers['streaming'].url}/predict",
        json={"input_params": ["a b", 0.0]},
        headers={"Accept": "text/event-stream"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    assert events == [
        {"prediction": {"index": 0, "token": "a"}},
        {"prediction": {"index": 1, "token": "b"}},
    ]


def test_raising_predict_is_a_500_and_the_replica_keeps_serving(
    workers: dict[str, Worker],
) -> None:
    """predict raising answers 500 predict_error with type and message; the next call works."""
    failed = workers["toolbox"].predict(["raise", 42])
    assert failed.status_code == 500
    assert failed.json()["error"] == {
        "code": "predict_error",
        "message": "ValueError: boom: 42",
        "details": {"stage": "predict", "exception_type": "ValueError"},
    }
    assert workers["toolbox"].predict("hello").json()["prediction"] == "hello"


def test_env_values_are_visible_to_predict_code(workers: dict[str, Worker]) -> None:
    """--env KEY=VALUE is set before the model imports and while it predicts."""
    response = workers["toolbox"].predict(["env", "CORMORANT_TEST_FLAG"])
    assert response.json()["prediction"] == {"now": "on", "at_import": "on"}


def test_predict_runs_in_the_models_directory(workers: dict[str, Worker]) -> None:
    """Model code opens artifacts relative to its own directory: it runs from there."""
    cwd = workers["toolbox"].predict(["cwd"]).json()["prediction"]
    assert Path(cwd).joinpath("toolbox.py").is_file()


async def test_threads_setting_runs_predictions_concurrently(
    workers: dict[str, Worker],
) -> None:
    """With --server threads=4, four slow predictions in one process overlap in time."""
    url = f"{workers['toolbox'].url}/predict"
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.monotonic()
        responses = await asyncio.gather(
            *(client.post(url, json={"input_params": ["sleep", 0.5]}) for _ in range(4))
        )
        elapsed = time.monotonic() - started
        metrics = (await client.get(f"{workers['toolbox'].url}/metrics")).text
    assert all(r.status_code == 200 for r in responses)
    assert len({r.json()["prediction"] for r in responses}) == 4
    assert elapsed < 1.5, f"4 x 0.5 s took {elapsed:.2f} s: predictions did not overlap"
    assert "cormorant_worker_predict_threads 4.0" in metrics


def test_bad_bodies_get_a_clear_400(workers: dict[str, Worker]) -> None:
    """Malformed JSON or a body without input_params is refused, saying what to send."""
    url = f"{workers['toolbox'].url}/predict"
    not_json = httpx.post(url, content=b"{oops", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert "not valid JSON" in not_json.json()["error"]["message"]
    missing = httpx.post(url, json={"inputs": [1]})
    assert missing.status_code == 400
    assert "'input_params'" in missing.json()["error"]["message"]


def test_metrics_count_requests_by_status(workers: dict[str, Worker]) -> None:
    """/metrics exposes requests by status, latency and in-flight for the replica."""
    workers["toolbox"].predict("x")
    workers["toolbox"].predict(["raise", 1])
    text = httpx.get(f"{workers['toolbox'].url}/metrics").text
    assert 'cormorant_worker_requests_total{status="200"}' in text
    assert 'cormorant_worker_requests_total{status="500"}' in text
    assert "cormorant_worker_request_duration_seconds_bucket" in text
    assert "cormorant_worker_requests_in_flight" in text


def test_missing_function_keeps_the_replica_unready_with_the_reason(
    workers: dict[str, Worker],
) -> None:
    """A file without the named function: /healthz and /predict answer 503 saying why."""
    broken = workers["broken"]
    health = broken.health()
    assert health is not None
    assert health.status_code == 503
    message = health.json()["error"]["message"]
    assert "has no function 'predict'" in message
    assert "predict_proba" in message
    response = broken.predict(1)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == message


def run_refused(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        worker_command(*args, "--port", str(free_port())),
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=tmp_path,
        timeout=30,
        check=False,
    )


def test_dash_in_the_file_name_is_refused_at_start(tmp_path: Path) -> None:
    """A file name with '-' stops the worker before serving, with a rename hint."""
    (tmp_path / "my-model.py").write_text("def predict(x):\n    return x\n")
    result = run_refused("--source", str(tmp_path), "--file", "my-model.py", tmp_path=tmp_path)
    assert result.returncode == 2
    assert "rename it, e.g. my_model.py" in result.stderr
    assert "Python cannot import a module whose name has '-'" in result.stderr


def test_bind_server_setting_is_refused(tmp_path: Path) -> None:
    """--server bind=... is refused: the --port flag owns the listening address."""
    (tmp_path / "model.py").write_text("def predict(x):\n    return x\n")
    result = run_refused(
        "--source", str(tmp_path), "--file", "model.py", "--server", "bind=0.0.0.0:9",
        tmp_path=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2
    assert "server setting 'bind'" in result.stderr
    assert "--port" in result.stderr


def test_unknown_and_invalid_server_settings_are_refused(tmp_path: Path) -> None:
    """An unknown setting is named with a suggestion; an invalid value is rejected."""
    (tmp_path / "model.py").write_text("def predict(x):\n    return x\n")
    model = ["--source", str(tmp_path), "--file", "model.py"]
    unknown = run_refused(*model, "--server", "worker=2", tmp_path=tmp_path)
    assert unknown.returncode == 2
    assert "server setting 'worker': unknown gunicorn setting; did you mean 'workers'?" in (
        unknown.stderr
    )
    invalid = run_refused(*model, "--server", "threads=many", tmp_path=tmp_path)
    assert invalid.returncode == 2
    assert "server setting 'threads': invalid value 'many'" in invalid.stderr
