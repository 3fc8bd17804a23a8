"""``python tests/attack.py [--out docs/bench/reliability.json]``: the figures of docs/reliability.md.

Attacks the real app as a public Space would meet it (``python app.py`` on a fresh data folder,
127.0.0.1 only): many concurrent sessions clicking through the queue, kill -9 restarts in the middle
of click bursts, hostile uploads, and a padded upload, and prints what held. Not a pytest file
(the suite's ``tests/test_reliability.py`` and ``tests/test_uploads.py`` assert each case); this is the
measurement the docs quote, rerunnable on any machine (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent.parent)]
from test_reliability import AppServer, _png_header_only, _zip, click, completions, join  # noqa: E402  (the suite's own app driver)

from censor.labels.sessions import MALIGN, SessionStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
LEAK = re.compile(r"(/(?:work|tmp|root|home|usr|var|opt)/)|Traceback|File \"")


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def start_session(server: AppServer, sid=None) -> tuple[Client, str | None]:
    c = Client(server.url, verbose=False)
    return c, c.predict(sid, api_name="/on_load")[0]


def burst(server: AppServer, client: Client, items, kill_after: int | None = None, batch: int = 1) -> list[int]:
    """Click ``items`` through the queue as the page does, ``batch`` in flight at a time (a person
    clicking fast: the queue holds at most 32 events for everyone); the acknowledged ones, in order."""
    fn = server.fn_index("label-grid", "click")
    items, acked = list(items), []
    try:
        for start in range(0, len(items), batch):
            ids = {join(server.url, client.session_hash, fn, [None, None], {"item": i}): i
                   for i in items[start:start + batch]}
            for msg in completions(server.url, client.session_hash, ids):
                if msg["success"]:
                    acked.append(ids[msg["event_id"]])
                if kill_after is not None and len(acked) == kill_after:
                    server.kill()
                    return acked
    except Exception:  # the stream dies with the server
        if kill_after is None:
            raise
    return acked


def malign_items(data: Path, sid: str) -> set[int]:
    return {it["item"] for it in SessionStore(data).items(sid) if it["state"] == MALIGN}


def sessions_held(data: Path, clients: int = 16, clicks: int = 40) -> dict:
    """``clients`` browsers at once, each clicking ``clicks`` images through the shared queue."""
    server = AppServer(data)
    try:
        def one(k):
            c, sid = start_session(server)
            return sid, burst(server, c, range(k, k + clicks))
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(one, range(clients), timeout=600))
    finally:
        server.kill()
    held = sum(1 for sid, acked in results if sid and malign_items(data, sid) == set(acked))
    return dict(sessions=clients, sessions_held=held, clicks_sent=clients * clicks,
                clicks_acknowledged=sum(len(a) for _, a in results),
                clicks_stored=sum(len(malign_items(data, sid)) for sid, _ in results if sid))


def kills_survived(data: Path, rounds: int = 5, per_round: int = 20) -> dict:
    sid, survived, lost, acked_total = None, 0, 0, 0
    for r in range(rounds):
        server = AppServer(data)
        c, sid = start_session(server, sid)
        acked = burst(server, c, range(r * per_round, (r + 1) * per_round), kill_after=per_round // 2, batch=5)
        server.kill()
        if sid is None:
            continue
        missing = set(acked) - malign_items(data, sid)
        survived += not missing
        lost += len(missing)
        acked_total += len(acked)
    return dict(kills=rounds, kills_survived=survived, acknowledged_clicks=acked_total, acknowledged_lost=lost)


def _one_nan(v: torch.Tensor) -> torch.Tensor:
    """The same tensor with its first element NaN (floating and complex tensors; others unchanged)."""
    if not (v.is_floating_point() or v.is_complex()) or v.numel() == 0:
        return v
    v = v.clone()
    v.view(-1)[0] = float("nan")
    return v


def hostile_cases(gallery: dict[str, bytes], session: dict[str, bytes]) -> list[tuple[str, str, dict | bytes]]:
    """(name, endpoint, zip entries or raw bytes): what a hostile visitor uploads."""
    def manifest(**change):
        m = json.loads(gallery["manifest.json"])
        m["settings"].update(change)
        return {**gallery, "manifest.json": json.dumps(m).encode()}

    def session_json(**change):
        m = json.loads(session["session.json"])
        m.update(change)
        return {**session, "session.json": json.dumps(m).encode()}

    def weights(body: bytes):  # replaced reward weights, the manifest's hash updated to match them
        m = json.loads(gallery["manifest.json"])
        m["reward_sha256"] = hashlib.sha256(body).hexdigest()
        return {**gallery, "reward.safetensors": body, "manifest.json": json.dumps(m).encode()}

    member = {k: v for k, v in load_tensors(gallery["reward.safetensors"]).items()}
    items = json.loads(session["session.json"])["items"]
    g, s = "/on_bundle_upload", "/on_session_upload"
    return [
        ("zip-slip entry", g, {**gallery, "../escape.json": b"{}"}),
        ("not a zip", g, os.urandom(4096)),
        ("truncated zip", g, b"truncate"),
        ("NaN reward weights", g, weights(save_tensors({k: _one_nan(v) for k, v in member.items()}))),
        ("complex64 reward weights", g, weights(save_tensors({k: _one_nan(v.to(torch.complex64))
                                                               if v.is_floating_point() else v
                                                               for k, v in member.items()}))),
        ("float8 reward weights", g, weights(save_tensors({k: v.to(torch.float8_e4m3fn) if v.is_floating_point()
                                                           else v for k, v in member.items()}))),
        ("300-member reward", g, {**gallery, "reward.json": json.dumps(
            {**json.loads(gallery["reward.json"]), "members": 300}).encode()}),
        ("markdown injection in the seed", g, manifest(seed="# [log in](http://phish.example)")),
        ("seed as a string", g, manifest(seed="0")),
        ("manifest not an object", g, {**gallery, "manifest.json": b"[1, 2]"}),
        ("100k-deep JSON", g, {**gallery, "manifest.json": b"[" * 100_000 + b"]" * 100_000}),
        ("pickle instead of safetensors", g, {**gallery, "reward.safetensors": b"\x80\x04\x95" + os.urandom(64)}),
        ("PNG claiming 20000x20000", g, {**gallery, "censored_000.png": _png_header_only(20000, 20000)}),
        ("entry name with a newline", g, {**gallery, "manifest.json\n": b"{}"}),
        ("300-character entry name", g, {**gallery, "a" * 296 + ".png": b"x"}),
        ("session: item without viewed", s, session_json(items=[{k: v for k, v in it.items() if k != "viewed"}
                                                              for it in items])),
        ("session: info as a list", s, session_json(info=[1, 2])),
        ("session: round 2^63-1", s, session_json(items=[{**it, "round": 2**63 - 1} for it in items])),
        ("session: zip-slip entry", s, {**session, "../../escape.json": b"{}"}),
    ]


def _write(path: Path, case: dict | bytes) -> Path:
    if isinstance(case, bytes):
        path.write_bytes(case)
        return path
    return _zip(path, case)


def hostile_inputs(data: Path, work: Path) -> dict:
    server = AppServer(data)
    rows = []
    try:
        c, sid = start_session(server)
        for i in range(3):
            click(server, c.session_hash, i)
        c.predict("ensemble", "ddpm-encoder", 1, 10, 0.1, api_name="/on_train")
        c.predict("time", 4.0, 0, 0, 5, 0, 2, "(none)", "base model", api_name="/on_censor")
        bundle = Path([f for f in c.predict(api_name="/on_share") if str(f).endswith(".zip")][0])
        session_zip = Path(c.predict(api_name="/on_session_download")[0])
        gallery = {n: zipfile.ZipFile(bundle).read(n) for n in zipfile.ZipFile(bundle).namelist()}
        session = {n: zipfile.ZipFile(session_zip).read(n) for n in zipfile.ZipFile(session_zip).namelist()}
        for k, (name, endpoint, case) in enumerate(hostile_cases(gallery, session)):
            path = _write(work / f"case{k}.zip", case)
            try:
                Client(server.url, verbose=False).predict(handle_file(str(path)), api_name=endpoint)
                rows.append(dict(case=name, outcome="accepted", message=""))
            except AppError as e:
                msg = str(e)
                clear = "\n" not in msg.strip() and not LEAK.search(msg) and "upstream Gradio app" not in msg
                rows.append(dict(case=name, outcome="refused clearly" if clear else "refused unclearly", message=msg))
        # entries the format does not use, each compressible ~100:1 (under the zip-bomb ratio): 100 MB unpacked
        pad = b"".join(os.urandom(6) + bytes(1018) for _ in range(1000))
        padded = dict(gallery, **{f"pad{i:03d}.png": pad for i in range(100)})
        before = folder_bytes(data) + folder_bytes(Path(os.environ["GRADIO_TEMP_DIR"]))
        path = _write(work / "padded.zip", padded)
        try:
            Client(server.url, verbose=False).predict(handle_file(str(path)), api_name="/on_bundle_upload")
            padded_outcome = "accepted"
        except AppError:
            padded_outcome = "refused"
        after = folder_bytes(data) + folder_bytes(Path(os.environ["GRADIO_TEMP_DIR"]))
    finally:
        server.kill()
    return dict(cases=rows, tried=len(rows), refused_clearly=sum(r["outcome"] == "refused clearly" for r in rows),
                padded_upload=dict(zip_bytes=path.stat().st_size, unpacked_bytes=sum(map(len, padded.values())),
                                   kept_on_disk_bytes=after - before, outcome=padded_outcome))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tests/attack.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="docs/bench/reliability.json")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--only", choices=("sessions", "kills", "hostile"), default=None)
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="attack_"))
    os.environ["GRADIO_TEMP_DIR"] = str(work / "gradio")
    runs = dict(sessions=lambda: sessions_held(work / "sessions", a.clients),
                kills=lambda: kills_survived(work / "kills", a.kills), hostile=lambda: hostile_inputs(work / "hostile", work))
    result = {name: run() for name, run in runs.items() if a.only in (None, name)}
    Path(a.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "cases"} for k, v in result.items()}, indent=1))
    for r in result.get("hostile", {}).get("cases", []):
        print(f"{r['outcome']:>18}  {r['case']}: {r['message'][:100]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
