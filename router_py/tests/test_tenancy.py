"""Tenants from a keys file: each key authenticates its own tenant, whose cache namespace no request header
can change; vLLM's ``cache_salt`` splits a namespace further (same salt shares, a different or absent salt
does not) and is validated; the keys file's errors name their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from router_py.router_config import RouterConfig
from router_py.tenancy import KeysFileError, Tenants, load_keys_file

ALICE, BOB = "sk-alice-0123456789", "sk-bob-9876543210"


@pytest.fixture
def config() -> RouterConfig:
    return RouterConfig(model_id="prism-test", max_input_tokens=64, max_total_tokens=128, tenant_header="x-tenant",
                        tenants=Tenants({ALICE: "alice", BOB: "bob"}, {"alice": 0.5}))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


GENERATE = {"inputs": "hello world", "parameters": {"max_new_tokens": 2}}


@pytest.mark.parametrize("headers", [{}, bearer("sk-mallory"), {"Authorization": ALICE}])
async def test_a_key_not_in_the_file_is_refused(client, backend, headers) -> None:
    resp = await client.post("/generate", json=GENERATE, headers=headers)
    assert resp.status_code == 401 and not backend.requests


async def test_each_key_is_its_own_namespace_and_a_header_cannot_change_it(client, backend) -> None:
    for key in (ALICE, BOB):
        assert (await client.post("/generate", json=GENERATE, headers=bearer(key))).status_code == 200
    spoof = {**bearer(ALICE), "x-tenant": "bob"}
    assert (await client.post("/generate", json=GENERATE, headers=spoof)).status_code == 200
    assert [r.namespace for r in backend.requests] == ["alice", "bob", "alice"]


async def test_cache_salt_splits_the_namespace_on_every_route(client, backend) -> None:
    h = bearer(ALICE)
    calls = [
        ("/generate", {**GENERATE, "parameters": {"max_new_tokens": 2, "cache_salt": "s1"}}),
        ("/generate", {**GENERATE, "cache_salt": "s1"}),
        ("/v1/completions", {"model": "tgi", "prompt": "hello", "max_tokens": 2, "cache_salt": "s2"}),
        ("/v1/chat/completions", {"model": "tgi", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
                                  "cache_salt": "s1"}),
        ("/generate", GENERATE),
    ]
    for path, body in calls:
        resp = await client.post(path, json=body, headers=h)
        assert resp.status_code == 200, resp.text
    assert [r.namespace for r in backend.requests] == ["alice\x00s1", "alice\x00s1", "alice\x00s2", "alice\x00s1",
                                                       "alice"]


@pytest.mark.parametrize("salt", ["", 42, ["a"], "x" * 257])
async def test_an_invalid_cache_salt_is_a_validation_error(client, backend, salt) -> None:
    resp = await client.post("/generate", json={**GENERATE, "cache_salt": salt}, headers=bearer(BOB))
    assert resp.status_code == 422
    assert resp.json() == {
        "error": "Input validation error: `cache_salt` must be a non-empty string of at most 256 characters",
        "error_type": "validation",
    }
    assert not backend.requests


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "keys"
    path.write_text(text)
    return path


def test_keys_file_parses_tenants_and_shares(tmp_path) -> None:
    path = write(tmp_path, f"# tenants\nalice {ALICE} 0.25\nalice sk-alice-2 0.25  # second key\nbob {BOB}\n\n")
    tenants = load_keys_file(path)
    assert tenants.by_key == {ALICE: "alice", "sk-alice-2": "alice", BOB: "bob"}
    assert tenants.shares == {"alice": 0.25}
    assert tenants.tenant_of_key(f"bearer {BOB}") == "bob" and tenants.tenant_of_key(f"Bearer {BOB.upper()}") is None


@pytest.mark.parametrize(("text", "message"), [
    ("alice", "keys:1: expected `TENANT KEY [SHARE]`, got 1 fields"),
    (f"alice {ALICE}\nbob {ALICE}", "keys:2: this key is already given to tenant 'alice'"),
    (f"alice {ALICE} 1.5", "keys:1: SHARE must be in (0, 1], got 1.5"),
    (f"alice {ALICE} half", "keys:1: SHARE must be a number in (0, 1], got 'half'"),
    (f"alice {ALICE} 0.6\nbob {BOB} 0.6", "the shares add up to 1.2, more than 1"),
    (f"alice {ALICE} 0.2\nalice k2 0.3", "keys:2: tenant 'alice' already has share 0.2"),
    ("# nothing\n", "no keys"),
])
def test_keys_file_errors_name_the_line(tmp_path, text, message) -> None:
    with pytest.raises(KeysFileError) as e:
        load_keys_file(write(tmp_path, text))
    assert message in str(e.value)


def test_missing_keys_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(KeysFileError, match="cannot read the API keys file"):
        load_keys_file(tmp_path / "absent")


def test_router_wires_the_keys_file_into_config_and_scheduler(tmp_path) -> None:
    from router_py import cli
    from router_py.backend_api import BackendInfo
    from router_py.scheduling.tenant_partitions import TenantPartitionedScheduler
    from router_py.shard_client.messages import ShardInfo

    args = cli.parse_args(["--tokenizer-name", "/m", "--api-keys-file", str(write(tmp_path, f"a {ALICE} 0.5\n"))])
    info = BackendInfo(max_input_tokens=100, max_total_tokens=200, max_batch_total_tokens=3200, block_size=16,
                       requires_padding=False, dtype="f32", device_type="cpu", support_chunking=True,
                       use_prefix_caching=True)
    shard = ShardInfo(requires_padding=False, dtype="f32", device_type="cpu", window_size=None, speculate=0,
                      support_chunking=True, use_prefix_caching=True, attention_impl="paged", block_size=16)
    known = cli.tenants(args)
    sched = cli.scheduler_factory(cli.scheduler_config(args, info, shard), known)()
    assert isinstance(sched, TenantPartitionedScheduler) and [p.name for p in sched.partitions] == ["a", ""]
    assert cli.router_config(args, info, known).tenants == known


def _scheduler_for(tmp_path: Path, keys: str, *extra: str):
    from router_py import cli
    from router_py.backend_api import BackendInfo
    from router_py.shard_client.messages import ShardInfo

    args = cli.parse_args(["--tokenizer-name", "/m", "--api-keys-file", str(write(tmp_path, keys)), *extra])
    info = BackendInfo(max_input_tokens=100, max_total_tokens=200, max_batch_total_tokens=3200, block_size=16,
                       requires_padding=False, dtype="f32", device_type="cpu", support_chunking=True,
                       use_prefix_caching=True)
    shard = ShardInfo(requires_padding=False, dtype="f32", device_type="cpu", window_size=None, speculate=0,
                      support_chunking=True, use_prefix_caching=True, attention_impl="paged", block_size=16)
    return cli.scheduler_factory(cli.scheduler_config(args, info, shard), cli.tenants(args),
                                 info.max_total_tokens, shared_key=args.api_key is not None)()


def test_shares_that_leave_no_blocks_are_refused_only_when_someone_has_no_share(tmp_path) -> None:
    """alice and bob take the whole pool: carol (no share) or the `--api-key` holder used to land silently in
    bob's partition (evicting his cache); now the router refuses to start. All tenants shared: it starts."""
    full = f"alice {ALICE} 0.5\nbob {BOB} 0.5\n"
    assert [p.name for p in _scheduler_for(tmp_path, full).partitions] == ["alice", "bob"]
    for keys, extra in ((full + "carol sk-carol-1\n", ()), (full, ("--api-key", "sk-shared"))):
        with pytest.raises(ValueError, match="tenant '\\(others\\)'"):
            _scheduler_for(tmp_path, keys, *extra)
