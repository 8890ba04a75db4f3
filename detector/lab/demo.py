"""`detector demo`: an embedded Tansu broker, one real worker, simulated traffic with incidents
streamed through Kafka in accelerated event time, alerts printed live, /metrics served by the
worker. Stops everything on Ctrl-C, SIGTERM or after ``--duration`` seconds, and removes its
temp folder on every exit; its children get SIGTERM if it is killed outright.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import orjson

from detector.lab.broker import BrokerError, Tansu, free_port
from detector.lab.processes import Terminated, die_with_parent, raise_on_sigterm

__all__ = ["add_arguments", "run"]

SCENARIOS = ["unauthorized_tool", "refusal_spike", "traffic_drop", "secret_leak"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=120.0,
                        help="stop after this many seconds (default 120)")
    parser.add_argument("--hours", type=float, default=2.0, help="event time to simulate")
    parser.add_argument("--metrics-port", type=int, default=0, help="0 picks a free port")


def _config(path: Path, bootstrap: str, metrics_port: int) -> Path:
    text = resources.files("detector").joinpath("data/detector.toml").read_text("utf-8")
    text = text.replace('brokers = "127.0.0.1:9092"', f'brokers = "{bootstrap}"')
    text = text.replace("idle_partition_timeout_seconds = 30",
                        "idle_partition_timeout_seconds = 3")
    text = text.replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
    text = text.replace("port = 9464", f"port = {metrics_port}")
    text = text.replace("log = true        #", "log = false       #")
    path.write_text(text, "utf-8")
    return path


def _row(a: dict[str, Any]) -> str:
    cohort = "/".join(a["cohort"].values())
    when = a["starts_at"] if a["status"] == "firing" else (a["ends_at"] or "")
    return (f"{when[:19]:19}  {a['severity']:5}  {a['status']:8}  {a['signal'][:24]:24}  "
            f"{cohort[:36]:36}  {a['summary'][:70]}")


async def _stream(bootstrap: str, lines: list[bytes], speedup: float, deadline: float) -> int:
    """Send lines in event-time order, ``speedup`` x faster than real time."""
    from aiokafka import AIOKafkaProducer

    from detector.core.events import decode

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await p.start()
    sent = 0
    try:
        t_first: float | None = None
        wall0 = time.monotonic()
        for i, ln in enumerate(lines):
            evs, _ = decode(ln)
            if evs:
                ts = float(evs[0].ts)  # type: ignore[arg-type]
                t_first = ts if t_first is None else t_first
                ahead = (ts - t_first) / speedup - (time.monotonic() - wall0)
                if ahead > 0.05:
                    await asyncio.sleep(ahead)
            if time.monotonic() > deadline:
                break
            await p.send("ai-traces", ln, partition=i % 4)
            sent += 1
    finally:
        await p.stop()
    return sent


async def _alerts(bootstrap: str, deadline: float) -> int:
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer("ai-alerts", bootstrap_servers=bootstrap, group_id=None,
                         auto_offset_reset="earliest", metadata_max_age_ms=2000)
    await c.start()
    n = 0
    try:
        print(f"{'time':19}  {'sev':5}  {'status':8}  {'signal':24}  {'cohort':36}  summary",
              flush=True)
        while time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=500)).values():
                for r in recs:
                    print(_row(orjson.loads(r.value)), flush=True)
                    n += 1
    finally:
        await c.stop()
    return n


def run(args: argparse.Namespace) -> int:
    from detector.lab.simulate import simulate

    raise_on_sigterm()
    deadline = time.monotonic() + args.duration
    work = Path(tempfile.mkdtemp(prefix="detector-demo-"))
    broker = Tansu(log_dir=work)
    worker: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        port = args.metrics_port or free_port()
        cfg = _config(work / "detector.toml", broker.bootstrap, port)
        print(f"demo: broker {broker.bootstrap}; metrics http://127.0.0.1:{port}/metrics; "
              f"worker log {work / 'worker.log'}", file=sys.stderr)
        s = simulate(work / "sim", hours=args.hours, seed=7, scenarios=SCENARIOS)
        lines = [ln for ln in (work / "sim" / "traces.jsonl").read_bytes().split(b"\n") if ln]
        shutil.rmtree(work / "sim")   # in memory from here on: no second copy on disk
        with (work / "worker.log").open("ab") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "detector.stream.app", "--config", str(cfg)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent(),
                env={**os.environ, "DETECTOR_KAFKA_SESSION_TIMEOUT_SECONDS": "6"})
        # Leave ~15 s for the worker to join; spread the event time over the rest.
        speedup = args.hours * 3600 / max(args.duration - 25.0, 10.0)
        print(f"demo: {s['events']} events, {len(SCENARIOS)} incident scenarios, "
              f"{speedup:.0f}x event time", file=sys.stderr)

        async def main() -> None:
            # SIGTERM cancels the tasks here (as asyncio.run does on Ctrl-C), so the Kafka
            # clients close in their finally blocks.
            me, terminated = asyncio.current_task(), asyncio.Event()

            def on_sigterm() -> None:
                terminated.set()
                me.cancel()  # type: ignore[union-attr]
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, on_sigterm)
            try:
                await asyncio.sleep(min(12.0, args.duration / 4))
                await asyncio.gather(_stream(broker.bootstrap, lines, speedup, deadline),
                                     _alerts(broker.bootstrap, deadline))
            except asyncio.CancelledError:
                if terminated.is_set():
                    raise Terminated(signal.SIGTERM) from None
                raise
        asyncio.run(main())
        return 0
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 0   # `kill PID` is how a service manager stops the demo: a normal end
    except BrokerError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second kill must not cut this short
        if worker is not None and worker.poll() is None:
            worker.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(20)
            if worker.poll() is None:
                worker.kill()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="python -m detector.lab.demo", description=__doc__)
    add_arguments(_p)
    sys.exit(run(_p.parse_args()))
