"""Prometheus rendering as TGI's exporter: names without _total, configured buckets, summaries otherwise."""

from __future__ import annotations

import pytest

from router_py.metrics import Metrics, duration_buckets


def test_counters_keep_raw_names_and_labels() -> None:
    m = Metrics()
    m.inc("tgi_request_count")
    m.inc("tgi_request_count", 2)
    m.inc("tgi_request_failure", err="validation")
    m.inc("tgi_batch_inference_count", method="prefill")
    text = m.render()
    assert "# TYPE tgi_request_count counter\ntgi_request_count 3\n" in text
    assert 'tgi_request_failure{err="validation"} 1' in text
    assert 'tgi_batch_inference_count{method="prefill"} 1' in text
    assert "_total" not in text


def test_gauges_overwrite() -> None:
    m = Metrics()
    m.set("tgi_queue_size", 4)
    m.set("tgi_queue_size", 2)
    m.set("tgi_batch_current_max_tokens", 0.5)
    text = m.render()
    assert "# TYPE tgi_queue_size gauge\ntgi_queue_size 2\n" in text
    assert "tgi_batch_current_max_tokens 0.5" in text
    assert m.value("tgi_queue_size") == 2


def test_duration_histogram_buckets() -> None:
    bounds = duration_buckets()
    assert len(bounds) == 35 and bounds[0] == pytest.approx(0.00015)
    assert bounds[1] == pytest.approx(0.000225) and bounds[-1] == pytest.approx(0.00015 * 1.5**34)
    m = Metrics()
    m.observe("tgi_request_duration", 0.0002)
    m.observe("tgi_request_duration", 100000.0)  # past the last bucket: only +Inf
    lines = m.render().splitlines()
    assert lines[0] == "# TYPE tgi_request_duration histogram"
    assert 'tgi_request_duration_bucket{le="0.00015000000000000001"} 0' in lines
    assert 'tgi_request_duration_bucket{le="0.00022500000000000002"} 1' in lines
    assert lines.count('tgi_request_duration_bucket{le="+Inf"} 2') == 1
    assert sum(1 for line in lines if line.startswith("tgi_request_duration_bucket")) == 36
    assert "tgi_request_duration_sum 100000.0002" in lines and "tgi_request_duration_count 2" in lines


def test_duration_bucket_labels_are_tgis_to_the_last_digit() -> None:
    """TGI builds them as ``value *= 1.5`` from 0.0001 and writes each f64 in its shortest round-trip form;
    ``0.00015 * 1.5**i`` differs in the last bit for 12 of the 35, so its ``le`` labels were other series."""
    tgi, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        tgi.append(repr(value))  # Rust's f64 Display: the shortest round-trip digits, no exponent here
    m = Metrics()
    m.observe("tgi_request_queue_duration", 1.0)
    les = [line.split('le="')[1].split('"')[0] for line in m.render().splitlines() if "_bucket" in line]
    assert les == tgi + ["+Inf"]
    assert les[:3] == ["0.00015000000000000001", "0.00022500000000000002", "0.0003375"]


def test_observer_writes_the_series_observe_does() -> None:
    m = Metrics()
    skipped = m.observer("tgi_request_skipped_tokens")
    assert "tgi_request_skipped_tokens" not in m.render()  # shown from the first observation, as observe
    skipped(0)
    m.observe("tgi_request_skipped_tokens", 2)
    skipped(1)
    lines = m.render().splitlines()
    assert "# TYPE tgi_request_skipped_tokens summary" in lines
    assert "tgi_request_skipped_tokens_sum 3" in lines and "tgi_request_skipped_tokens_count 3" in lines
    m.labeled(replica="1").observer("tgi_request_generated_tokens")(5)
    assert 'tgi_request_generated_tokens_count{replica="1"} 1' in m.render()


def test_token_histograms_use_linear_buckets() -> None:
    m = Metrics(max_input_tokens=100, max_total_tokens=200)
    m.observe("tgi_request_input_length", 3)
    m.observe("tgi_request_max_new_tokens", 3)
    m.observe("tgi_batch_next_size", 3, method="x")
    text = m.render()
    assert 'tgi_request_input_length_bucket{le="3"} 1' in text
    assert 'tgi_request_max_new_tokens_bucket{le="2"} 0' in text
    assert 'tgi_request_max_new_tokens_bucket{le="4"} 1' in text
    assert 'tgi_batch_next_size_bucket{method="x",le="1024"} 1' in text


def test_unbucketed_names_render_as_summaries() -> None:
    m = Metrics()
    for value in (1, 2, 3, 4):
        m.observe("tgi_request_skipped_tokens", value)
    lines = m.render().splitlines()
    assert "# TYPE tgi_request_skipped_tokens summary" in lines
    assert 'tgi_request_skipped_tokens{quantile="0"} 1' in lines
    assert 'tgi_request_skipped_tokens{quantile="0.5"} 2' in lines
    assert 'tgi_request_skipped_tokens{quantile="1"} 4' in lines
    assert "tgi_request_skipped_tokens_count 4" in lines


def test_label_values_are_escaped() -> None:
    m = Metrics()
    m.inc("x", reason='a"b\\c')
    assert 'x{reason="a\\"b\\\\c"} 1' in m.render()


def test_labeled_view_writes_the_same_registry_with_its_labels() -> None:
    m = Metrics()
    r0, r1 = m.labeled(replica="0"), m.labeled(replica="1")
    r0.inc("prism_prefix_cache_hit_tokens", 5)
    r1.inc("prism_prefix_cache_hit_tokens", 7)
    r1.set("tgi_queue_size", 3)
    r0.observe("tgi_batch_inference_duration", 0.1, method="prefill")
    assert r0.value("prism_prefix_cache_hit_tokens") == 5
    assert m.value("prism_prefix_cache_hit_tokens", replica="1") == 7
    assert m.value("prism_prefix_cache_hit_tokens") == 0  # the unlabeled series is another series
    text = m.render()
    assert 'prism_prefix_cache_hit_tokens{replica="0"} 5' in text
    assert 'tgi_queue_size{replica="1"} 3' in text
    assert 'tgi_batch_inference_duration_count{method="prefill",replica="0"} 1' in text
