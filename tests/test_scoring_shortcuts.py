"""The scorer's shortcuts against the Python they stand for, over a replay with incidents:
Scorer.learn hands the rates whose decision changes nothing of their learning (neither
anomalous nor leaning as far as an episode counts) to learn_plain with the undecided ones,
and Scorer.score decides a rate window in the C twin's ``decide``. The reference learns
every decided rate in the per-signal loop (forced by an empty set of rate names) and decides
with ``decide_rate_py``; both must leave the same alerts and every cohort's state alike."""

from __future__ import annotations

from pathlib import Path

from baselines import codec
from detector.config import load_config
from detector.core.pipeline import Pipeline
from detector.core.scoring import decide_rate_py
from detector.core.stage2 import Stage2
from detector.lab.replay import BLOCK_LINES
from detector.lab.simulate import simulate


def _models(s: Stage2) -> dict:
    """Every cohort's learned state, dict order aside (snapshots sort what they compare)."""
    return {key: (m.windows, sorted(m.persist.items()), sorted(m.recent.items()),
                  sorted(m.episodes.items()),
                  sorted((n, codec.dumps(b)) for n, b in m.baselines.items()),
                  sorted((n, c.state()) for n, c in m.seq.items()))
            for key, m in s.models.items()}


def test_the_shortcuts_decide_and_learn_as_the_python_does(tmp_path: Path) -> None:
    simulate(tmp_path, hours=2.0, seed=3, rate=20.0,
             scenarios=["refusal_spike", "refusal_collapse", "schema_failures"])
    lines = (tmp_path / "traces.jsonl").read_bytes().splitlines()
    cfg = load_config(None, env=False)
    fast, loop = Pipeline(cfg), Pipeline(cfg)
    assert isinstance(fast.stage2, Stage2) and isinstance(loop.stage2, Stage2)
    loop.stage2.scorer._rate_names = frozenset()   # every decision through the loop
    loop.stage2.scorer._decide = decide_rate_py
    assert fast.stage2.scorer._decide is not decide_rate_py   # (the twin was built)
    scorer, kinds = fast.stage2.scorer, {}
    for sig in fast.stage2.scorer.signals:
        kinds[sig.name] = sig.kind
    seen = {"plain": 0, "loop": 0}
    learn = scorer.learn

    def counting(p: object, own: object, decisions: list) -> list[str]:
        for d in decisions:
            if kinds[d.signal] == "rate":
                bent = d.anomalous or abs(d.score) >= scorer.clear_ratio * d.threshold
                seen["loop" if bent else "plain"] += 1
        return learn(p, own, decisions)  # type: ignore[arg-type]

    scorer.learn = counting  # type: ignore[method-assign]
    got: list[list[str]] = [[], []]
    for i in range(0, len(lines), BLOCK_LINES):
        for j, p in enumerate((fast, loop)):
            got[j].extend(map(repr, p.feed_many(lines[i:i + BLOCK_LINES])))
    # Both ways were taken (the scenarios page, and most decided windows are plain)...
    assert seen["plain"] > 100 and seen["loop"] > 10 and got[0]
    # ...to the same alerts and the same state.
    assert got[0] == got[1]
    assert _models(fast.stage2) == _models(loop.stage2)
