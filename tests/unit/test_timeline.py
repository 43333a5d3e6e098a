"""Stage timeline: the recorder writes a trace several processes can append
to, the reader parses it, and utilisation / overlap are computed right."""

import json
import multiprocessing as mp

import pytest

from medha_vllm.timeline import (StageRecorder, describe, load_events, load_spans,
                                 overlapping_chunks, prefill_window, stage_utilisation)


def _write(path, stage, events):
    rec = StageRecorder(path, stage, 0, 2)
    for reqs, t0, t1 in events:
        rec.begin(reqs)
        rec._local.cur["t0"] = t0
        rec._local.cur["ready"] = t0
        import medha_vllm.timeline as tl
        real = tl.time.time
        tl.time.time = lambda: t1
        try:
            rec.end()
        finally:
            tl.time.time = real


def _run_all(procs):
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0


def test_two_writers_one_file_and_utilisation(tmp_path):
    path = str(tmp_path / "tl.json")
    a = {"r": {"n": 64, "start": 0, "kind": "prefill"}}
    b = {"r": {"n": 64, "start": 64, "kind": "prefill"}}
    c = {"r": {"n": 64, "start": 128, "kind": "prefill"}, "d": {"n": 1, "start": 9, "kind": "decode"}}
    # Stage 0 runs chunks at [0,1], [1,2], [2,3]; stage 1 at [1,2], [2,3], [3,4].
    procs = [mp.get_context("fork").Process(target=_write, args=(path, 0, [(a, 0, 1), (b, 1, 2), (c, 2, 3)])),
             mp.get_context("fork").Process(target=_write, args=(path, 1, [(a, 1, 2), (b, 2, 3), (c, 3, 4)]))]
    _run_all(procs)
    text = open(path).read()
    assert text.startswith("[\n") and text.count("\n[") == 0
    events = load_events(path)
    assert sum(e["ph"] == "M" for e in events) == 4
    spans = load_spans(path)
    assert [s.stage for s in spans].count(0) == 3 and len(spans) == 6
    window = prefill_window(spans, "r")
    assert window == (0, 4)
    util = stage_utilisation(spans, window)
    assert util == {0: pytest.approx(0.75), 1: pytest.approx(0.75)}
    # Chunk [64:128] on stage 0 overlaps chunk [0:64] on stage 1, etc.
    pairs = overlapping_chunks(spans, "r")
    assert len(pairs) == 2
    assert all(p.stage != q.stage for p, q in pairs)
    assert stage_utilisation(spans, (3, 4)) == {0: 0.0, 1: pytest.approx(1.0)}
    with pytest.raises(ValueError, match="no prefill chunk of 'x'"):
        prefill_window(spans, "x")


def test_serial_chunks_do_not_count_as_overlap(tmp_path):
    path = str(tmp_path / "tl.json")
    a = {"r": {"n": 64, "start": 0, "kind": "prefill"}}
    b = {"r": {"n": 64, "start": 64, "kind": "prefill"}}
    _write(path, 0, [(a, 0, 1), (b, 2, 3)])
    _write(path, 1, [(a, 1, 2), (b, 3, 4)])
    assert overlapping_chunks(load_spans(path), "r") == []


def test_closed_json_is_read_too(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "forward", "pid": 0, "ts": 1e6,
                                              "dur": 5e5, "args": {"reqs": {}}}]}))
    assert load_spans(p)[0].end == pytest.approx(1.5)


def test_describe():
    assert describe({"a": {"n": 512, "start": 1024, "kind": "prefill"},
                     "b": {"n": 1, "start": 7, "kind": "decode"}}) == "a [1024:1536], 1 decodes"


def test_prefill_tokens_by_request(tmp_path):
    from medha_vllm.timeline import prefill_tokens_by_request

    path = str(tmp_path / "tl.json")
    a = {"r": {"n": 64, "start": 0, "kind": "prefill"}, "d": {"n": 1, "start": 9, "kind": "decode"}}
    b = {"r": {"n": 32, "start": 64, "kind": "prefill"}, "s": {"n": 5, "start": 0, "kind": "prefill"}}
    _write(path, 0, [(a, 0, 1), (b, 1, 2)])
    _write(path, 1, [(a, 1, 2)])
    spans = load_spans(path)
    assert prefill_tokens_by_request(spans) == {"r": 96, "s": 5}
    assert prefill_tokens_by_request(spans, stage=1) == {"r": 64}


def _open_at_once(path, barrier, stage):
    barrier.wait()
    StageRecorder(path, stage, 0, 4)


def test_writers_racing_to_create_the_file_keep_its_header(tmp_path):
    # Every stage opens the timeline at start-up, at the same moment. The file
    # must never be visible without its "[" header: a writer that found it
    # still empty appended its events first, and the creator's header then
    # overwrote their first bytes (CI, stop 24: '[\nname":"process_name"...').
    ctx = mp.get_context("fork")
    for trial in range(150):
        path = str(tmp_path / f"tl{trial}.json")
        barrier = ctx.Barrier(4)
        procs = [ctx.Process(target=_open_at_once, args=(path, barrier, s)) for s in range(4)]
        _run_all(procs)
        text = open(path).read()
        assert text.startswith("[\n") and text.count("[") == 1, (trial, text[:80])
        assert sum(e["ph"] == "M" for e in load_events(path)) == 8, trial
    assert not [f for f in tmp_path.iterdir() if f.name.endswith(".tmp")]
