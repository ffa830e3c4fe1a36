"""The comparison report: per-arm estimates with 95% bootstrap intervals, paired differences with
p-values, latency, tokens and cost, a verdict written from those numbers, and the files
report.json, report.md, questions.csv, metrics.png and quality_vs_cost.png."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from itertools import combinations
from pathlib import Path
from typing import Any

from ragtune.config import RagtuneConfig, ragtune_home
from ragtune.core.metrics import Estimate, bootstrap_mean, paired_bootstrap
from ragtune.core.modes import ADAPTER_MODES
from ragtune.eval.answers import (
    ANSWER_METRICS, RETRIEVAL_METRICS, Answer, Question, adapter_for, score, semantic_similarity, training_overlap,
)

LABELS = {"exact_match": "EM", "f1": "F1", "rouge_l": "ROUGE-L", "bleu": "BLEU", "semantic": "semantic",
          "hit_at_k": "hit@k", "mrr": "MRR", "ndcg_at_k": "nDCG@k"}
# the metrics broken down by the questions' groups, and how the report names synth's groups
GROUP_METRICS = ("f1", "semantic", "hit_at_k")
GROUP_NAMES = {"seen": "seen documents, new questions", "unseen": "unseen documents"}


def summarize(cfg: RagtuneConfig, questions: list[Question], answers: dict[str, list[Answer]],
              wall: dict[str, float]) -> dict[str, Any]:
    """Everything report.json holds (scores 0-100)."""
    import numpy as np

    from ragtune.embedding import load_encoder

    c = cfg.compare
    boot = {"samples": c.bootstrap_samples, "seed": c.seed}
    encoder = load_encoder(cfg.embedding)
    scores = {arm: [score(q, a, arm, c.top_k, sim) for q, a, sim in
                    zip(questions, got, semantic_similarity(encoder, questions, got))] for arm, got in answers.items()}
    arms: dict[str, Any] = {}
    for arm, rows in scores.items():
        metrics = {m: _pct(bootstrap_mean([r[m] for r in rows], **boot)) for m in (*ANSWER_METRICS, *RETRIEVAL_METRICS)
                   if all(m in r for r in rows)}
        for verdict_of in ("correct", "faithful"):  # compare.judge: the judge's verdicts, when every answer has one
            if all(verdict_of in a.judged for a in answers[arm]):
                metrics[f"judge_{verdict_of}"] = _pct(bootstrap_mean([a.judged[verdict_of] for a in answers[arm]], **boot))
        seconds = np.asarray([a.seconds for a in answers[arm]])
        n = len(rows)
        machine_hours = wall[arm] * (1 if c.endpoint else c.actors) / 3600
        arms[arm] = {
            "metrics": metrics,
            "latency_s": {"p50": float(np.percentile(seconds, 50)), "p95": float(np.percentile(seconds, 95))},
            "prompt_tokens_mean": float(np.mean([a.prompt_tokens for a in answers[arm]])),
            "completion_tokens_mean": float(np.mean([a.completion_tokens for a in answers[arm]])),
            "wall_s": round(wall[arm], 2), "questions_per_s": round(n / wall[arm], 3),
            "cost_per_1000_questions": round(c.price_per_hour * machine_hours / n * 1000, 4) if c.price_per_hour else None,
        }
    differences = {}
    for a, b in combinations(scores, 2):
        differences[f"{a} - {b}"] = {m: _pct(paired_bootstrap([r[m] for r in scores[a]], [r[m] for r in scores[b]], **boot))
                                     for m in ANSWER_METRICS}
    groups: dict[str, list[int]] = {}  # the questions of each group, when the set has more than one
    for i, q in enumerate(questions):
        groups.setdefault(q.group, []).append(i)
    by_group = {group: {"questions": len(members), "arms": {
        arm: {m: _pct(bootstrap_mean([rows[i][m] for i in members], **boot)) for m in GROUP_METRICS
              if all(m in rows[i] for i in members)}
        for arm, rows in scores.items()}} for group, members in sorted(groups.items())} if len(groups) > 1 else None
    adapted = sorted(ADAPTER_MODES.intersection(answers))
    leakage = {arm: got for arm in adapted  # None: the arm has no adapter to check
               if (got := training_overlap(adapter_for(arm, c.adapter, c.hybrid_adapter), questions)) is not None}
    return {"questions": len(questions), "question_set": c.questions, "sample": c.sample, "seed": c.seed,
            "model": cfg.generator.model, "backend": "endpoint" if c.endpoint else cfg.generator.backend, "adapter": c.adapter, "collection": cfg.milvus.collection, "top_k": c.top_k,
            "max_tokens": c.max_tokens, "arms": arms, "differences": differences, "groups": by_group,
            "hybrid_adapter": c.hybrid_adapter, "endpoint": c.endpoint,
            "training": {arm: _training_cost(adapter_for(arm, c.adapter, c.hybrid_adapter)) for arm in adapted} or None,
            "leakage": leakage or None,
            "verdict": leakage_warnings(leakage, len(questions)) + verdict(arms, differences), "scores": scores}


def _pct(est: Estimate) -> dict[str, float]:
    out = {"mean": 100 * est.mean, "low": 100 * est.low, "high": 100 * est.high}
    if est.p_value is not None:
        out["p_value"] = est.p_value
    return {k: round(v, 4) for k, v in out.items()}


def share(flags: list[bool], c) -> dict[str, float]:
    """The share (0-100) of ``flags`` that hold, with its 95% bootstrap interval (``c``: the compare
    section's samples and seed)."""
    return _pct(bootstrap_mean([float(f) for f in flags], samples=c.bootstrap_samples, seed=c.seed))


def _training_cost(adapter: str | None) -> dict[str, Any] | None:
    path = Path(adapter or "") / "training_report.json"
    if not adapter or not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {k: report.get(k) for k in ("wall_seconds", "gpu_hours", "cpu_hours", "steps", "tokens_per_second")}


def leakage_warnings(leakage: dict[str, Any], questions: int) -> list[str]:
    """A warning per adapter trained on evaluation questions, first in the verdict."""
    return [f"**Warning**: the {arm} arm's adapter was trained or validated on {got['overlap']} of the {questions} "
            f"evaluation questions (e.g. id {got['question_ids'][0]}): its scores on those are not held-out; "
            "evaluate on questions `ragtune prepare` held out (prepare.eval_holdout, prepare.exclude_questions)."
            for arm, got in leakage.items() if got and got.get("overlap")]


def verdict(arms: dict[str, Any], differences: dict[str, Any]) -> list[str]:
    """One sentence per answer metric: the best arm, and which of its leads are significant."""
    lines = []
    for m in ANSWER_METRICS:
        ranked = sorted(arms, key=lambda arm: arms[arm]["metrics"][m]["mean"], reverse=True)
        best = ranked[0]
        est = arms[best]["metrics"][m]
        if all(arms[arm]["metrics"][m]["mean"] == est["mean"] for arm in ranked):
            lines.append(f"**{LABELS[m]}**: every arm scores {est['mean']:.1f}; no arm is ahead.")
            continue
        clear, unclear = [], []
        for other in ranked[1:]:
            key, sign = (f"{best} - {other}", 1) if f"{best} - {other}" in differences else (f"{other} - {best}", -1)
            d = differences[key][m]
            lead, low, high = sign * d["mean"], min(sign * d["low"], sign * d["high"]), max(sign * d["low"], sign * d["high"])
            text = f"{other} by {lead:+.1f} [{low:+.1f}, {high:+.1f}], {_p(d['p_value'])}"
            (clear if low > 0 else unclear).append(text)
        line = f"**{LABELS[m]}**: {best} is highest ({est['mean']:.1f} [{est['low']:.1f}, {est['high']:.1f}])"
        if clear:
            line += "; it beats " + "; ".join(clear)
        if unclear:
            line += "; not significantly ahead of " + "; ".join(unclear)
        lines.append(line + ".")
    return lines


# What each arm needs besides the base model, simplest first.
_NEEDS = {"base": "nothing besides the base model", "rag": "a retrieval index (kept current by ingest; no training)",
          "ft": "a trained adapter (trained again when the facts change)",
          "hybrid": "both a retrieval index and a trained adapter"}


def recommend(summary: dict[str, Any]) -> dict[str, Any]:
    """Which arm to use for this data, and why, from the numbers: the simplest arm that no arm beats
    significantly on F1 (95% paired interval above 0), with its scores, what it beats and ties,
    what it costs in latency and training, and how it took the knowledge base's changes."""
    arms, n = summary["arms"], summary["questions"]

    def lead(a: str, b: str) -> tuple[float, float, float, float]:
        """F1 of a minus b: mean, low, high, p."""
        if f"{a} - {b}" in summary["differences"]:
            d = summary["differences"][f"{a} - {b}"]["f1"]
            return d["mean"], d["low"], d["high"], d["p_value"]
        d = summary["differences"][f"{b} - {a}"]["f1"]
        return -d["mean"], -d["high"], -d["low"], d["p_value"]

    def said(d: tuple[float, float, float, float]) -> str:
        return f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}], {_p(d[3])}"

    def scores(arm: str) -> str:
        m = arms[arm]["metrics"]
        return (f"F1 {m['f1']['mean']:.1f} [{m['f1']['low']:.1f}, {m['f1']['high']:.1f}], semantic "
                f"{m['semantic']['mean']:.1f} [{m['semantic']['low']:.1f}, {m['semantic']['high']:.1f}]")

    order = [arm for arm in _NEEDS if arm in arms]
    unbeaten = [a for a in order if not any(lead(b, a)[1] > 0 for b in arms if b != a)]
    pick = unbeaten[0] if unbeaten else max(order, key=lambda a: arms[a]["metrics"]["f1"]["mean"])
    beaten = [a for a in order if a != pick and lead(pick, a)[1] > 0]
    tied = [a for a in order if a != pick and a not in beaten]
    reasons = [f"{pick} scores {scores(pick)} on the {n} questions."]
    if beaten:
        reasons.append("It is significantly ahead of " + "; ".join(f"{a} (F1 {said(lead(pick, a))})" for a in beaten) + ".")
    if tied:
        reasons.append("It is not significantly different from " + "; ".join(f"{a} (F1 {said(lead(pick, a))})" for a in tied)
                       + f". Of these it needs the least: {_NEEDS[pick]}.")
    latency = arms[pick]["latency_s"]
    reasons.append(f"Latency p50 {latency['p50']:.2f} s, p95 {latency['p95']:.2f} s per question"
                   + (f" (base: {arms['base']['latency_s']['p50']:.2f} s)" if pick != "base" and "base" in arms else "") + ".")
    training = (summary.get("training") or {}).get(pick)
    if training:
        reasons.append(f"Its adapter took {training['wall_seconds']} s to train ({training['gpu_hours']} GPU-hours, "
                       f"{training['cpu_hours']} CPU-hours).")
    fresh = summary.get("freshness")
    if fresh:
        shares = {a: f["after_update_share"]["new"] for a, f in fresh["arms"].items()}
        reasons.append(f"After {fresh['facts']} facts changed, it stated the new fact in {shares[pick]['mean']:.0f}% "
                       f"[{shares[pick]['low']:.0f}, {shares[pick]['high']:.0f}] of them; " + ", ".join(
                           f"{a} {v['mean']:.0f}% [{v['low']:.0f}, {v['high']:.0f}]" for a, v in shares.items() if a != pick)
                       + ".")
    if pick == "base" or not beaten:
        headline = (f"No approach is significantly better than {pick} on these {n} questions: the differences are "
                    "within what chance gives. Use the simplest, and measure on more questions (or a larger model) "
                    "before paying for training or retrieval.")
    else:
        headline = f"Use **{pick}** for this data: it needs {_NEEDS[pick]}."
    return {"arm": pick, "significant": bool(beaten) and pick != "base", "headline": headline, "reasons": reasons}


def _p(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def judge_reliability(known: list[list[float]], c) -> dict[str, Any]:
    """How often the judge gave the known verdict ([expected, verdict] pairs), 0-100 with its 95%
    interval; chance is 50 (as many yes pairs as no pairs)."""
    if not known:
        return {"known_pairs": 0, "accuracy": None, "better_than_chance": False}
    accuracy = share([expected == got for expected, got in known], c)
    return {"known_pairs": len(known), "accuracy": accuracy, "better_than_chance": accuracy["low"] > 50}


def write_report(cfg: RagtuneConfig, questions: list[Question], answers: dict[str, list[Answer]],
                 wall: dict[str, float], freshness: dict[str, Any] | None = None,
                 judge_known: list[list[float]] | None = None) -> Path:
    """Write the report files; returns their directory. ``judge_known``: the judge's [expected,
    verdict] on known pairs, when the comparison was judged."""
    out = Path(cfg.compare.output_dir or ragtune_home() / "reports" / time.strftime("compare-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(cfg, questions, answers, wall)
    summary["freshness"] = freshness
    summary["judge"] = judge_reliability(judge_known, cfg.compare) if judge_known is not None else None
    summary["recommendation"] = recommend(summary)
    scores = summary.pop("scores")
    (out / "report.json").write_text(json.dumps({**summary, "config": cfg.compare.model_dump(),
                                                     "generator": cfg.generator.model_dump()}, indent=2))
    with open(out / "questions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        arms = list(answers)
        columns = ["id", "question", "gold_answers", "gold_doc_id"]
        for arm in arms:
            columns += [f"{arm}_answer", f"{arm}_retrieved", *(f"{arm}_{m}" for m in ANSWER_METRICS)]
        writer.writerow(columns)
        for i, q in enumerate(questions):
            row = [q.id, q.question, json.dumps(q.answers, ensure_ascii=False), q.doc_id]
            for arm in arms:
                a = answers[arm][i]
                row += [a.text, " ".join(a.retrieved), *(round(scores[arm][i][m], 4) for m in ANSWER_METRICS)]
            writer.writerow(row)
    (out / "answers.jsonl").write_text("".join(json.dumps({"arm": arm, **asdict(a)}, ensure_ascii=False) + "\n"
                                               for arm, got in answers.items() for a in got))
    _plots(summary, out)
    (out / "report.md").write_text(markdown(summary))
    return out


def markdown(summary: dict[str, Any]) -> str:
    arms = summary["arms"]

    def cell(e: dict[str, float] | None) -> str:
        return f"{e['mean']:.1f} [{e['low']:.1f}, {e['high']:.1f}]" if e else "–"

    advice = summary["recommendation"]
    lines = [f"# base vs RAG vs fine-tuned vs hybrid — {summary['questions']} questions", "", "## Recommendation", "",
             advice["headline"], "", *(f"- {r}" for r in advice["reasons"]), "",
             f"Question set `{summary['question_set']}` (sample {summary['sample'] or 'all'}, seed {summary['seed']}), model "
             f"`{summary['model']}` on the `{summary['backend']}` backend, adapter `{summary['adapter']}`"
             + (f" (hybrid: `{summary['hybrid_adapter']}`)" if summary["hybrid_adapter"] else "") + f", collection `{summary['collection']}`, top {summary['top_k']} "
             f"passages, answers of at most {summary['max_tokens']} tokens, greedy. Scores 0–100 with 95% paired-"
             "bootstrap intervals over questions; *semantic* is the cosine between the embeddings of the answer and of "
             "its closest gold answer (the collection's encoder): it credits a right answer phrased as a sentence, which "
             "EM and F1 mark as nearly wrong.", "", "## Verdict", "", *(f"- {v}" for v in summary["verdict"]), "",
             "## Answer quality", "", "| arm | " + " | ".join(LABELS[m] for m in ANSWER_METRICS) + " |",
             "|---|" + "---|" * len(ANSWER_METRICS)]
    lines += [f"| {arm} | " + " | ".join(cell(a["metrics"].get(m)) for m in ANSWER_METRICS) + " |" for arm, a in arms.items()]
    if summary.get("judge"):
        j = summary["judge"]
        lines += ["", "## Judge (the base model grading the answers)", "",
                  "| arm | correct, % | supported by the passages, % |", "|---|---|---|"]
        lines += [f"| {arm} | {cell(a['metrics'].get('judge_correct'))} | {cell(a['metrics'].get('judge_faithful'))} |"
                  for arm, a in arms.items()]
        reliability = (f"The judge gave the known verdict on {cell(j['accuracy'])}% of {j['known_pairs']} known pairs "
                       "(each question's gold answer against itself, and against another question's gold answer; "
                       "chance: 50%)" if j["accuracy"] else "No known pairs could be drawn (a batch needs two "
                       "questions with different answers)")
        lines += ["", reliability + (". It is better than chance." if j["better_than_chance"] else
                                     " — **not better than chance: its verdicts above say nothing about these "
                                     "answers**; judge with a larger model (`generator.model`).")]
    if summary.get("groups"):
        groups = summary["groups"]
        named = {g: f"{GROUP_NAMES.get(g, g or 'no group')} ({groups[g]['questions']})" for g in groups}
        lines += ["", "## By question group", "",
                  "The same answers, scored on each group of the question set (its `group` field); F1 and semantic, "
                  f"and hit@{summary['top_k']} for the retrieving arms.", "",
                  "| arm | " + " | ".join(f"{named[g]}: {LABELS[m].replace('@k', '@' + str(summary['top_k']))}"
                                        for g in groups for m in GROUP_METRICS) + " |",
                  "|---|" + "---|" * (len(groups) * len(GROUP_METRICS))]
        lines += [f"| {arm} | " + " | ".join(cell(groups[g]["arms"][arm].get(m)) for g in groups for m in GROUP_METRICS)
                  + " |" for arm in arms]
    retrieving = {arm: a for arm, a in arms.items() if "hit_at_k" in a["metrics"]}
    if retrieving:
        lines += ["", "## Retrieval (the gold passage's document)", "",
                  "| arm | " + " | ".join(LABELS[m].replace("@k", f"@{summary['top_k']}") for m in RETRIEVAL_METRICS) + " |", "|---|" + "---|" * len(RETRIEVAL_METRICS)]
        lines += [f"| {arm} | " + " | ".join(cell(a["metrics"][m]) for m in RETRIEVAL_METRICS) + " |"
                  for arm, a in retrieving.items()]
    lines += ["", "## Differences (row arm minus column arm; p: two-sided paired bootstrap)", "",
              "| pair | " + " | ".join(LABELS[m] for m in ANSWER_METRICS) + " |", "|---|" + "---|" * len(ANSWER_METRICS)]
    lines += [f"| {pair} | " + " | ".join(f"{cell(d[m])} {_p(d[m]['p_value'])}" for m in ANSWER_METRICS) + " |"
              for pair, d in summary["differences"].items()]
    lines += ["", "## Cost", "", "| arm | latency p50 / p95 s | prompt tokens | answer tokens | questions/s | cost per 1,000 |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {arm} | {a['latency_s']['p50']:.2f} / {a['latency_s']['p95']:.2f} | {a['prompt_tokens_mean']:.0f} | "
              f"{a['completion_tokens_mean']:.1f} | {a['questions_per_s']:.2f} | "
              f"{'–' if a['cost_per_1000_questions'] is None else a['cost_per_1000_questions']} |" for arm, a in arms.items()]
    hours = (f"Answers from the endpoint {summary['endpoint']}: latency is each request's round trip. Cost per 1,000 "
             "questions = compare.price_per_hour × endpoint-hours" if summary["endpoint"] else
             "Latency is each question's share of its generation batch. Cost per 1,000 questions = "
             "compare.price_per_hour × actor-hours")
    lines += ["", hours + " per question × 1,000 (– when no price is set)."]
    if summary["leakage"]:
        lines += ["", "## Leakage check", "", "| arm | evaluation questions in the adapter's training set |", "|---|---|"]
        lines += [f"| {arm} | " + (f"{got['overlap']} of {summary['questions']}" if got["checked"]
                                    else f"not checked: {got['reason']}") + " |" for arm, got in summary["leakage"].items()]
    if summary.get("freshness"):
        f = summary["freshness"]
        lines += ["", "## Freshness: the knowledge base changed after training", "",
                  f"{f['facts']} facts changed in {f['documents_updated']} revised documents, ingested after the "
                  "comparison. Answers stating the new fact, the old one, or neither; after the update, the share "
                  "stating each (%, 95% bootstrap interval over the facts):", "",
                  "| arm | before the update: new / old / neither | after the update: new / old / neither | new after, % "
                  "| old after, % | revised document retrieved |", "|---|---|---|---|---|---|"]
        lines += [f"| {arm} | " + " | ".join(" / ".join(str(a[when][k]) for k in ("new", "old", "neither"))
                                             for when in ("before_update", "after_update"))
                  + f" | {cell(a['after_update_share']['new'])} | {cell(a['after_update_share']['old'])}"
                  + f" | {'–' if a['revised_document_retrieved'] is None else a['revised_document_retrieved']} |"
                  for arm, a in f["arms"].items()]
    trained: dict[str, list[str]] = {}  # arms that share an adapter share its line
    for arm, t in sorted((summary["training"] or {}).items()):
        if t:
            trained.setdefault(json.dumps(t, sort_keys=True), []).append(arm)
    for key, arms in trained.items():
        t = json.loads(key)
        whose = f"the {arms[0]} arm's adapter" if len(arms) == 1 else f"the adapter of the {' and '.join(arms)} arms"
        lines += ["", f"Training {whose} took {t['wall_seconds']} s ({t['gpu_hours']} GPU-hours, "
                      f"{t['cpu_hours']} CPU-hours, {t['steps']} steps)."]
    lines += ["", "![answer metrics](metrics.png)", "", "![quality against cost](quality_vs_cost.png)", ""]
    return "\n".join(lines)


def _plots(summary: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = summary["arms"]
    names = list(arms)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    width = 0.8 / len(names)
    for i, arm in enumerate(names):
        means = [arms[arm]["metrics"][m]["mean"] for m in ANSWER_METRICS]
        errors = [[means[j] - arms[arm]["metrics"][m]["low"] for j, m in enumerate(ANSWER_METRICS)],
                  [arms[arm]["metrics"][m]["high"] - means[j] for j, m in enumerate(ANSWER_METRICS)]]
        ax.bar([j + i * width for j in range(len(ANSWER_METRICS))], means, width, yerr=errors, capsize=3, label=arm)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(ANSWER_METRICS))],
                  [LABELS[m] for m in ANSWER_METRICS])
    ax.set_ylabel("score (0-100), 95% interval")
    ax.set_title(f"Answer quality, {summary['questions']} questions")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "metrics.png")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for arm in names:
        f1 = arms[arm]["metrics"]["f1"]
        x = arms[arm]["latency_s"]["p50"]
        ax.errorbar([x], [f1["mean"]], yerr=[[f1["mean"] - f1["low"]], [f1["high"] - f1["mean"]]], fmt="o", capsize=4,
                    label=arm)
    ax.set_xlabel("seconds per question (p50)")
    ax.set_ylabel("F1 (0-100), 95% interval")
    ax.set_title("Quality against cost")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "quality_vs_cost.png")
    plt.close(fig)
