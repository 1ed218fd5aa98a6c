"""Several tenants on one launched stack (``--api-keys-file`` with capacity shares): keys authenticate their
tenant, a tenant never reads another's cache (same prompt: a hit for its own second request, a miss for the
other tenant), ``cache_salt`` splits a tenant's cache, another tenant's flood does not evict a tenant's cached
prefix (its share), outputs are the same whoever asks, and no block is leaked."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import Stack

ALICE, BOB, CAROL = "sk-alice-4b7f0c", "sk-bob-91aa3e", "sk-carol-5d2e77"
HIT = "prism_prefix_cache_hit_tokens"
IN_USE = 'prism_prefix_cache_blocks{state="in_use"}'
PREFIX = "A long shared system prompt about the cluster, its tenants and the rules they follow. " * 6


@pytest.fixture(scope="module")
def tenants_stack(tmp_path_factory) -> Iterator[Stack]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    keys.write_text(f"alice {ALICE} 0.4\nbob {BOB} 0.4\ncarol {CAROL}\n")
    # 256 blocks: alice and bob 102 each, the others 52; one request of 800 tokens needs 51. LRU: the flood test
    # then fails without shares (DART's own key happened to spare alice's short prompt in a shared pool too).
    s = Stack(["--num-blocks", "256", "--api-keys-file", str(keys), "--cache-policy", "lru",
               "--max-batch-prefill-tokens", "800", "--max-input-tokens", "780", "--max-total-tokens", "800"])
    s.wait_healthy()
    yield s
    assert s.close() == 0


def generate(stack: Stack, key: str, inputs: str, **extra) -> dict:
    body = {"inputs": inputs, "parameters": {"max_new_tokens": 8}, **extra}
    resp = httpx.post(f"{stack.url}/generate", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def hits_of(stack: Stack, key: str, inputs: str, **extra) -> tuple[float, str]:
    """Prefix-cache hit tokens of one request (the counter's change) and its text."""
    before = stack.metric(HIT)
    text = generate(stack, key, inputs, **extra)["generated_text"]
    return stack.metric(HIT) - before, text


def test_keys_authenticate_their_tenant(tenants_stack: Stack) -> None:
    for headers in ({}, {"Authorization": "Bearer sk-mallory"}):
        resp = httpx.post(f"{tenants_stack.url}/generate", json={"inputs": "hi"}, headers=headers, timeout=60)
        assert resp.status_code == 401
    for key in (ALICE, BOB, CAROL):
        generate(tenants_stack, key, "hi")


def test_a_tenant_never_reads_anothers_cache_and_outputs_do_not_depend_on_who_asks(tenants_stack: Stack) -> None:
    prompt = PREFIX + "Question one?"
    first, text = hits_of(tenants_stack, ALICE, prompt)
    again, text_again = hits_of(tenants_stack, ALICE, prompt)
    other, text_bob = hits_of(tenants_stack, BOB, prompt)
    shared_rest, text_carol = hits_of(tenants_stack, CAROL, prompt)
    assert first == 0 and again > 0, "a tenant's own second request hits"
    assert other == 0 and shared_rest == 0, "another tenant's identical prompt misses"
    assert text == text_again == text_bob == text_carol


def test_cache_salt_splits_a_tenants_cache(tenants_stack: Stack) -> None:
    prompt = PREFIX + "Question two?"
    assert hits_of(tenants_stack, ALICE, prompt, cache_salt="user-1")[0] == 0
    assert hits_of(tenants_stack, ALICE, prompt, cache_salt="user-1")[0] > 0
    assert hits_of(tenants_stack, ALICE, prompt, cache_salt="user-2")[0] == 0
    bad = httpx.post(f"{tenants_stack.url}/generate", json={"inputs": prompt, "cache_salt": ""},
                     headers={"Authorization": f"Bearer {ALICE}"}, timeout=60)
    assert bad.status_code == 422 and "cache_salt" in bad.json()["error"]


def test_another_tenants_flood_does_not_evict_a_tenants_share(tenants_stack: Stack) -> None:
    """alice caches a prompt used once; bob then sends 12 new 37-44 block prompts, 1.9x the whole pool: in a
    shared pool alice's blocks, the oldest, would be evicted (this test fails without the shares)."""
    prompt = "Alice's private notes: " + " ".join(f"note{j}" for j in range(60))
    generate(tenants_stack, ALICE, prompt)
    evictions = tenants_stack.metric("prism_prefix_cache_evictions")
    for i in range(12):
        generate(tenants_stack, BOB, f"Flood {i}: " + " ".join(f"w{i}x{j}" for j in range(115)))
    assert tenants_stack.metric("prism_prefix_cache_evictions") > evictions, "the flood evicted bob's own blocks"
    hit, _ = hits_of(tenants_stack, ALICE, prompt)
    assert hit > 0, "alice's cached prompt survived bob's flood"
    deadline = time.monotonic() + 30
    while tenants_stack.metric(IN_USE) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tenants_stack.metric(IN_USE) == 0
