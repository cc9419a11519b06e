"""Every model written and read back through the ORM on a migrated database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from cormorant.common.auth import ADMIN_KEY_PREFIX, generate_token, hash_token
from cormorant.common.db import session_factory
from cormorant.common.db.models import (
    PREFIX_LENGTH,
    ActionKind,
    AdminKey,
    BatchJob,
    Comparison,
    Dataset,
    DatasetVersion,
    Endpoint,
    EndpointKind,
    EndpointStatus,
    EndpointToken,
    FeedbackLoop,
    Flow,
    FlowRun,
    JobStatus,
    Metric,
    ModelVersion,
    Prediction,
    Replica,
    ReplicaState,
    Rollout,
    RolloutStatus,
    ScheduleKind,
    Traffic,
    TrafficChange,
    Trigger,
    VersionStatus,
)

DIGEST = "ab" * 32


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


def endpoint(slug: str = "sentiment-1", kind: EndpointKind = EndpointKind.WEB) -> Endpoint:
    spec = {"source": "/src", "file": "model.py", "function": "predict"}
    return Endpoint(slug=slug, name="sentiment", kind=kind, spec=spec)


def version(ep: Endpoint, number: int = 1) -> ModelVersion:
    return ModelVersion(
        endpoint_id=ep.id,
        number=number,
        source="/src",
        source_digest=DIGEST,
        file="model.py",
        function="predict",
        env={"THRESHOLD": "0.5"},
        server={"threads": 4},
    )


async def test_endpoint_versions_traffic_and_replicas_round_trip(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        ep = endpoint()
        session.add(ep)
        await session.flush()
        v1 = version(ep)
        session.add(v1)
        await session.flush()
        session.add_all(
            [
                Traffic(endpoint_id=ep.id, generation=1, weights={"1": 100}),
                TrafficChange(endpoint_id=ep.id, generation=1, weights={"1": 100}, action="deploy"),
                Rollout(endpoint_id=ep.id, version_id=v1.id, policy={"steps": [10, 50, 100]}),
                Replica(endpoint_id=ep.id, version_id=v1.id, url="http://127.0.0.1:9000", pid=42),
            ]
        )

    async with sessions() as session:
        stored = await session.scalar(select(Endpoint).where(Endpoint.slug == "sentiment-1"))
        assert stored is not None
        assert stored.kind is EndpointKind.WEB
        assert stored.status is EndpointStatus.DEPLOYING  # server default
        assert stored.spec["function"] == "predict"
        assert stored.desired_replicas == 0
        assert stored.created_at.tzinfo is not None
        assert stored.deleted_at is None

        stored_version = await session.scalar(select(ModelVersion))
        assert stored_version is not None
        assert (stored_version.number, stored_version.status) == (1, VersionStatus.PENDING)
        assert stored_version.accepts_file is False
        assert stored_version.server == {"threads": 4}

        traffic = await session.get(Traffic, ep.id)
        assert traffic is not None
        assert (traffic.generation, traffic.weights, traffic.policy) == (1, {"1": 100}, None)
        history = await session.get(TrafficChange, (ep.id, 1))
        assert history is not None
        assert history.action == "deploy"

        rollout = await session.scalar(select(Rollout))
        assert rollout is not None
        assert (rollout.status, rollout.step, rollout.checks) == (RolloutStatus.RUNNING, 0, [])

        replica = await session.scalar(select(Replica))
        assert replica is not None
        assert (replica.state, replica.restarts, replica.pid) == (ReplicaState.STARTING, 0, 42)


async def test_version_numbers_are_unique_per_endpoint(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        first, second = endpoint("a"), endpoint("b")
        session.add_all([first, second])
        await session.flush()
        session.add_all([version(first), version(second), version(first, 2)])
    with pytest.raises(IntegrityError, match="uq_model_versions_endpoint_id_number"):
        async with sessions.begin() as session:
            session.add(version(first, 2))


async def test_deleting_an_endpoint_cascades_to_what_serves_it(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        ep = endpoint()
        session.add(ep)
        await session.flush()
        v1 = version(ep)
        session.add(v1)
        await session.flush()
        session.add_all(
            [
                Traffic(endpoint_id=ep.id, weights={"1": 100}),
                Replica(endpoint_id=ep.id, version_id=v1.id),
                EndpointToken(endpoint_id=ep.id, token_hash=hash_token("t"), prefix="cmt_abcd"),
            ]
        )
    async with sessions.begin() as session:
        await session.execute(text("DELETE FROM endpoints"))
    async with sessions() as session:
        for model in (ModelVersion, Traffic, Replica, EndpointToken):
            assert await session.scalar(select(func.count()).select_from(model)) == 0


async def test_an_unknown_state_is_refused_by_the_database(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions.begin() as session:
        session.add(endpoint())
    with pytest.raises(IntegrityError, match="ck_endpoints_endpointstatus"):
        async with sessions.begin() as session:
            await session.execute(text("UPDATE endpoints SET status = 'sleeping'"))


async def test_tokens_and_admin_keys_store_only_hashes(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    token, key = generate_token(), generate_token(ADMIN_KEY_PREFIX)
    async with sessions.begin() as session:
        ep = endpoint()
        session.add(ep)
        await session.flush()
        session.add_all(
            [
                EndpointToken(
                    endpoint_id=ep.id, token_hash=hash_token(token), prefix=token[:PREFIX_LENGTH]
                ),
                AdminKey(name="ops", key_hash=hash_token(key), prefix=key[:PREFIX_LENGTH]),
            ]
        )
    async with sessions() as session:
        stored = await session.scalar(
            select(EndpointToken).where(EndpointToken.token_hash == hash_token(token))
        )
        assert stored is not None
        assert (stored.endpoint_id, stored.revoked_at) == (ep.id, None)
        admin = await session.scalar(select(AdminKey))
        assert admin is not None
        assert (admin.name, admin.key_hash, admin.prefix) == ("ops", hash_token(key), key[:12])
        dump = await session.scalar(
            text("SELECT string_agg(t::text, ' ') FROM (SELECT * FROM endpoint_tokens) t")
        )
        assert token not in dump


async def test_token_tables_have_no_column_that_could_hold_a_token(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        result = await conn.execute(
            text(
                "SELECT table_name, column_name, data_type, character_maximum_length"
                " FROM information_schema.columns"
                " WHERE table_name IN ('endpoint_tokens', 'admin_keys')"
            )
        )
        columns = {(table, name): (kind, length) for table, name, kind, length in result}
    assert columns == {
        ("endpoint_tokens", "id"): ("uuid", None),
        ("endpoint_tokens", "endpoint_id"): ("uuid", None),
        ("endpoint_tokens", "token_hash"): ("character varying", 64),
        ("endpoint_tokens", "prefix"): ("character varying", PREFIX_LENGTH),
        ("endpoint_tokens", "created_at"): ("timestamp with time zone", None),
        ("endpoint_tokens", "revoked_at"): ("timestamp with time zone", None),
        ("admin_keys", "id"): ("uuid", None),
        ("admin_keys", "name"): ("text", None),
        ("admin_keys", "key_hash"): ("character varying", 64),
        ("admin_keys", "prefix"): ("character varying", PREFIX_LENGTH),
        ("admin_keys", "created_at"): ("timestamp with time zone", None),
        ("admin_keys", "revoked_at"): ("timestamp with time zone", None),
    }
    # A raw token is longer than the prefix column and is not 64 hex digits.
    assert len(generate_token()) > PREFIX_LENGTH


@pytest.mark.parametrize(
    ("column", "value", "error"),
    [
        ("token_hash", "token", "ck_endpoint_tokens_token_hash_sha256"),
        ("token_hash", "AB" * 32, "ck_endpoint_tokens_token_hash_sha256"),
        ("prefix", "token", "too long"),
    ],
)
async def test_a_raw_token_does_not_fit_anywhere(
    sessions: async_sessionmaker[AsyncSession], column: str, value: str, error: str
) -> None:
    token = generate_token()
    fields = {"token_hash": hash_token(token), "prefix": token[:8]}
    fields[column] = token if value == "token" else value
    async with sessions.begin() as session:
        ep = endpoint()
        session.add(ep)
    with pytest.raises(DBAPIError, match=error):
        async with sessions.begin() as session:
            session.add(EndpointToken(endpoint_id=ep.id, **fields))


async def test_token_and_key_hashes_are_unique(sessions: async_sessionmaker[AsyncSession]) -> None:
    digest = hash_token("same")
    async with sessions.begin() as session:
        ep = endpoint()
        session.add_all([ep, AdminKey(name="a", key_hash=digest, prefix="cmk_a")])
        await session.flush()
        session.add(EndpointToken(endpoint_id=ep.id, token_hash=digest, prefix="cmt_a"))
    with pytest.raises(IntegrityError, match="uq_endpoint_tokens_token_hash"):
        async with sessions.begin() as session:
            session.add(EndpointToken(endpoint_id=ep.id, token_hash=digest, prefix="cmt_b"))
    with pytest.raises(IntegrityError, match="uq_admin_keys_key_hash"):
        async with sessions.begin() as session:
            session.add(AdminKey(name="b", key_hash=digest, prefix="cmk_b"))


async def test_datasets_batch_jobs_and_their_versions(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    files = [{"path": "out/predictions.csv", "size": 10, "sha256": DIGEST}]
    async with sessions.begin() as session:
        ep = endpoint(kind=EndpointKind.BATCH)
        dataset = Dataset(name="scored")
        session.add_all([ep, dataset])
        await session.flush()
        session.add(DatasetVersion(dataset_id=dataset.id, version=1, files=files))
        await session.flush()
        job = BatchJob(
            endpoint_id=ep.id,
            input_file="raw/in.csv",
            output_file="out/predictions.csv",
            dataset_id=dataset.id,
            rows_total=20_000,
            output_dataset_version=1,
        )
        session.add(job)

    async with sessions() as session:
        stored = await session.get(BatchJob, job.id)
        assert stored is not None
        assert (stored.status, stored.rows_done, stored.failures) == (JobStatus.PENDING, 0, 0)
        assert (stored.rows_total, stored.output_dataset_version) == (20_000, 1)
        stored_version = await session.get(DatasetVersion, (dataset.id, 1))
        assert stored_version is not None
        assert stored_version.files == files

    with pytest.raises(IntegrityError, match="uq_datasets_name"):
        async with sessions.begin() as session:
            session.add(Dataset(name="scored"))
    with pytest.raises(IntegrityError, match="pk_dataset_versions"):
        async with sessions.begin() as session:
            session.add(DatasetVersion(dataset_id=dataset.id, version=1))
    with pytest.raises(IntegrityError, match="fk_batch_jobs_output_dataset_version"):
        async with sessions.begin() as session:
            await session.execute(text("UPDATE batch_jobs SET output_dataset_version = 7"))
    # Job records keep their dataset: it cannot be deleted from under them.
    with pytest.raises(IntegrityError, match="fk_batch_jobs_dataset_id_datasets"):
        async with sessions.begin() as session:
            await session.execute(text("DELETE FROM datasets"))


async def test_feedback_loops_triggers_and_flows(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    tasks = [{"name": "train", "type": "exec", "status": "succeeded", "duration_s": 1.5}]
    async with sessions.begin() as session:
        ep = endpoint()
        dataset = Dataset(name="feedback")
        flow = Flow(name="retrain", spec={"tasks": [{"exec": "python train.py"}]}, source="...")
        session.add_all([ep, dataset, flow])
        await session.flush()
        session.add_all(
            [
                FeedbackLoop(
                    name="daily",
                    endpoint_id=ep.id,
                    dataset_id=dataset.id,
                    schedule_kind=ScheduleKind.EVERY,
                    schedule_expr="1d",
                    query={"status": 200},
                ),
                Trigger(
                    name="drift",
                    endpoint_id=ep.id,
                    metric="accuracy",
                    op=Comparison.LESS,
                    threshold=0.8,
                    every_seconds=60,
                    action_kind=ActionKind.FLOW,
                    action_config={"flow": "retrain"},
                ),
                FlowRun(flow_id=flow.id, status=JobStatus.SUCCEEDED, tasks=tasks),
            ]
        )

    async with sessions() as session:
        loop = await session.scalar(select(FeedbackLoop))
        assert loop is not None
        assert (loop.schedule_kind, loop.enabled, loop.last_run_at) == (
            ScheduleKind.EVERY,
            True,
            None,
        )
        trigger = await session.scalar(select(Trigger))
        assert trigger is not None
        assert (trigger.op, trigger.threshold, trigger.min_events) == (Comparison.LESS, 0.8, 1)
        raw_op = await session.scalar(text("SELECT op FROM triggers"))
        assert raw_op == "<"
        run = await session.scalar(select(FlowRun))
        assert run is not None
        assert (run.status, run.tasks) == (JobStatus.SUCCEEDED, tasks)

    with pytest.raises(IntegrityError, match="ck_triggers_every_seconds_positive"):
        async with sessions.begin() as session:
            await session.execute(text("UPDATE triggers SET every_seconds = 0"))


async def test_predictions_and_metrics_through_the_orm(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    endpoint_id = uuid.uuid4()
    received = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    async with sessions.begin() as session:
        session.add_all(
            [
                Prediction(
                    request_id="r1",
                    received_at=received,
                    endpoint_id=endpoint_id,
                    version=1,
                    input=["I love it"],
                    output={"label": "positive"},
                    status=200,
                    latency_ms=1.25,
                    trace_id="0af7651916cd43dd8448eb211c80319c",
                ),
                Metric(endpoint_id=endpoint_id, version=1, key="accuracy", value=0.93),
                Metric(endpoint_id=endpoint_id, key="accuracy", value=0.91, request_id="r1"),
            ]
        )

    async with sessions() as session:
        prediction = await session.get(Prediction, (received, "r1"))
        assert prediction is not None
        assert (prediction.input, prediction.output) == (["I love it"], {"label": "positive"})
        assert (prediction.status, prediction.latency_ms, prediction.error) == (200, 1.25, None)
        metrics = (await session.scalars(select(Metric).order_by(Metric.id))).all()
        assert [(m.id, m.value, m.request_id) for m in metrics] == [
            (1, 0.93, None),
            (2, 0.91, "r1"),
        ]
        assert metrics[0].logged_at <= datetime.now(UTC)
