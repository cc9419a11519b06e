"""Flows end to end through the gateway: retrain → deploy under a policy → promoted, and a
version whose custom metric breaks its check rolled back by the policy, with the reason."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from tests.conftest import ROOT, Stack

sys.path.insert(0, str(ROOT / "bench"))

from rate_load import RateLoad

RATE = 25.0

TRAIN = '''\
"""Retrain iris on scikit-learn's bundled data (no download) into a model directory."""
import sys
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

PREDICT = """\\
from pathlib import Path

import joblib

MODEL = joblib.load(Path(__file__).with_name("model.joblib"))


def predict(a, b, c, d):
    return int(MODEL.predict([[a, b, c, d]])[0])
"""

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
X, y = load_iris(return_X_y=True)
model = LogisticRegression(max_iter=1000).fit(X, y)
joblib.dump(model, out / "model.joblib")
(out / "predict.py").write_text(PREDICT)
print(f"trained: accuracy {model.score(X, y):.3f}")
'''

RETRAIN_FLOW = """\
name: retrain-iris
tasks:
  - name: train
    type: exec
    command: python train.py out/model
  - name: ship
    type: deploy
    endpoint: iris flow
    source: out/model
    server: {workers: 1}
    policy:
      steps: [50, 100]
      interval: 2s
      checks:
        - {metric: error_rate, max: 0.05}
        - {metric: p99_latency, max: 5000}
"""

BAD_METRIC_FLOW = """\
name: ship-graded
tasks:
  - name: ship
    type: deploy
    endpoint: {slug}
    source: worse
    policy:
      steps: [40, 100]
      interval: 2s
      checks:
        - {{metric: quality, min_ratio: 0.8}}
"""


def graded_model(directory: Path, quality: float) -> Path:
    directory.mkdir()
    (directory / "predict.py").write_text(
        "from cormorant.sdk import Endpoint\n\n\n"
        "def predict(*x):\n"
        f"    Endpoint().log_metric('quality', {quality})\n"
        "    return 'ok'\n"
    )
    return directory


async def test_retrain_flow_deploys_under_a_policy_and_promotes(
    stack: Stack, tmp_path: Path
) -> None:
    """Run 1 trains and creates the endpoint; run 2 retrains and ships version 2 under a
    policy while traffic flows: every check passes at 50 % and 100 %, it is promoted, and no
    request fails."""
    (tmp_path / "train.py").write_text(TRAIN)
    flow_file = tmp_path / "flow.yaml"
    flow_file.write_text(RETRAIN_FLOW)
    client = stack.client()
    first = await asyncio.to_thread(client.flows.run, flow_file, timeout=240)
    assert first["status"] == "succeeded", first
    assert "trained: accuracy" in first["tasks"][0]["output"]
    assert "created endpoint iris-flow" in first["tasks"][1]["output"]
    token = client.endpoints.rotate_token("iris-flow")
    load = RateLoad(
        f"{stack.url}/api/v1/endpoints/iris-flow/predict",
        token,
        RATE,
        body=b'{"input_params": [5.1, 3.5, 1.4, 0.2]}',
    )
    runner = asyncio.ensure_future(load.run(max_seconds=240))
    try:
        second = await asyncio.to_thread(client.flows.run, "retrain-iris", timeout=240)
    finally:
        load.stop()
        await runner
    assert second["status"] == "succeeded", second
    train, ship = second["tasks"]
    assert train["status"] == "succeeded"
    assert ship["status"] == "succeeded"
    assert "rollout succeeded" in ship["output"]
    assert ship["duration_s"] > 0
    traffic = client.rollouts.traffic("iris-flow")
    assert traffic["stable"] == "2"
    assert traffic["weights"] == {"2": 100}
    assert traffic["rollouts"][0]["status"] == "succeeded"
    assert [s.failed for s in load.samples].count(True) == 0
    assert {s.version for s in load.samples} == {"1", "2"}
    runs = client.flows.runs("retrain-iris")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded"]
    client.endpoints.delete("iris-flow")


async def test_flow_version_breaking_its_metric_check_is_rolled_back_with_the_reason(
    stack: Stack, tmp_path: Path
) -> None:
    """`cormorant flow run` ships a version whose logged quality is far below the stable
    version's: the policy rolls it back without a human, the command fails, and the run and
    the rollout record why."""
    client = stack.client()
    created = client.endpoints.create(
        "graded flow", str(graded_model(tmp_path / "good", 0.9)), server={"workers": 1}
    )
    slug = created["slug"]
    client.endpoints.wait_until_running(slug)
    graded_model(tmp_path / "worse", 0.2)
    flow_file = tmp_path / "ship.yaml"
    flow_file.write_text(BAD_METRIC_FLOW.format(slug=slug))
    load = RateLoad(f"{stack.url}/api/v1/endpoints/{slug}/predict", created["token"], RATE)
    runner = asyncio.ensure_future(load.run(max_seconds=240))
    try:
        result = await asyncio.to_thread(stack.cli, "flow", "run", str(flow_file))
    finally:
        load.stop()
        await runner
    assert result.returncode == 1, result.stdout + result.stderr
    assert "quality" in result.stderr
    [run] = client.flows.runs("ship-graded")
    assert run["status"] == "failed"
    assert "was not promoted" in run["error"]
    assert "below 0.8× the stable version's" in run["error"]
    traffic = client.rollouts.traffic(slug)
    assert traffic["weights"] == {"1": 100}
    latest = traffic["rollouts"][0]
    assert latest["status"] == "rolled_back"
    assert "quality" in latest["reason"]
    assert traffic["history"][0]["action"] == "rollback"
    assert [s.failed for s in load.samples].count(True) == 0
    client.endpoints.delete(slug)


BUILD_AND_SHIP = """\
name: build-and-ship
tasks:
  - name: build
    type: exec
    command: >-
      mkdir -p out &&
      printf 'def predict(x):\\n    return "built"\\n' > out/predict.py &&
      echo built it
  - name: ship
    type: deploy
    endpoint: shipped
    source: out
    server: {workers: 1}
  - name: again
    type: deploy
    endpoint: shipped
    source: out
  - name: undo
    type: rollback
    endpoint_id: shipped
  - name: never
    type: exec
    command: echo unreachable
"""


def test_flow_builds_deploys_and_stops_at_the_first_failure(stack: Stack, tmp_path: Path) -> None:
    """exec builds a model directory in the run's workspace, deploy creates the endpoint from
    it through the API, a second deploy adds version 2 and promotes it, rollback has nothing
    to roll back and fails the run; the last task is skipped, the flow's directory untouched."""
    flow_file = tmp_path / "flow.yaml"
    flow_file.write_text(BUILD_AND_SHIP)
    client = stack.client()
    run = client.flows.run(flow_file, timeout=240)
    tasks = {t["name"]: t for t in run["tasks"]}
    assert run["status"] == "failed", run
    assert "undo" in run["error"]
    assert "nothing to roll back" in run["error"]
    assert tasks["build"]["status"] == "succeeded"
    assert "built it" in tasks["build"]["output"]
    assert "created endpoint shipped" in tasks["ship"]["output"]
    assert "version 2 of shipped deployed and promoted" in tasks["again"]["output"]
    assert tasks["undo"]["status"] == "failed"
    assert tasks["never"]["status"] == "skipped"
    assert not (tmp_path / "out").exists()
    assert client.rollouts.traffic("shipped")["weights"] == {"2": 100}
    client.endpoints.delete("shipped")


BATCH_FLOW = """\
name: nightly-scores
tasks:
  - name: score
    type: batch-predict
    endpoint_id: {slug}
    input_file: flow-numbers/in.csv
    output_file: scored.csv
    dataset: flow-numbers
"""


def test_a_batch_predict_flow_task_runs_a_job_to_its_end(stack: Stack, tmp_path: Path) -> None:
    """The ``batch-predict`` task runs a job through the API and reports its rows and output
    reference; the output is in the dataset."""
    client = stack.client()
    model = tmp_path / "double"
    model.mkdir()
    (model / "predict.py").write_text("def predict(x):\n    return x * 2\n")
    slug = client.endpoints.create("flow batch", str(model), kind="batch", server={"workers": 1})[
        "slug"
    ]
    client.request("POST", "/api/v1/datasets", json={"name": "flow-numbers"})
    client.request(
        "POST",
        "/api/v1/datasets/flow-numbers/files",
        data={"path": "in.csv"},
        files={"file": ("in.csv", b"x\n1\n2\n3\n", "text/csv")},
    )
    flow_file = tmp_path / "batch.yaml"
    flow_file.write_text(BATCH_FLOW.format(slug=slug))
    run = client.flows.run(flow_file, timeout=240)
    assert run["status"] == "succeeded", run
    assert "3 rows (0 failed) → flow-numbers@2/scored.csv" in run["tasks"][0]["output"]
    scored = client._http.get("/api/v1/datasets/flow-numbers/versions/2/files/scored.csv")
    # Predictions are text cells (JSON for non-strings), so they are quoted.
    assert scored.text.splitlines() == ['"x","prediction","error"', '1,"2",', '2,"4",', '3,"6",']
