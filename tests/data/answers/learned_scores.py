#!/usr/bin/env python3
"""Could a learned combination of what ragd knows about a sentence pick quotes better than its
hand-set score? Reads `ragd eval answers --explain --json` reports of the three dev splits and
answers two questions, each by leave-one-set-out (fit on two sets, measure on the third, so a
gain must carry over to a document style the fit never saw):

1. Ranking: is the best quotable sentence (and the best two) one that holds an expected string
   more often under a logistic model of the sentence's features than under ragd's `score`?
2. Answering: does a logistic model of the best sentence's features separate right answers
   from wrong ones and from unanswerable questions better than `score >= threshold`? (The
   reports are run with every quote forced, `--min-extract 0`, so each question's outcome is
   its best sentence's.)

With --decoder GGUF (llama-cpp-python, as in ../shared/peers) it also adds the decoder's
likelihoods of the question given each sentence and of each sentence given the question.

    for s in markdown encyclopedic scientific; do
      ragd eval answers --docs tests/data/answers/$s/corpus.jsonl \\
        --questions tests/data/answers/$s/dev.jsonl --min-extract 0 --explain --json \
        > /tmp/explain-$s.json
    done
    python3 tests/data/answers/learned_scores.py /tmp/explain-{markdown,encyclopedic,scientific}.json

Needs numpy. Prints a table; chooses nothing for ragd.
"""

import argparse
import json
import math
import re

import numpy as np

WORD = re.compile(r"[A-Za-z0-9]+")
STOP = set(
    "a an the of in on at to for by with from and or is are was were be been it its this that "
    "what which who whom whose when where how why does do did can could should would will".split()
)


def words(text):
    return {w.lower() for w in WORD.findall(text)} - STOP


def load(path):
    report = json.load(open(path))
    report = report.get("ragd", report)
    questions = []
    for o in report["outcomes"]:
        rows = [s for s in o.get("sentences", []) if s["excluded"] is None]
        questions.append({"id": o["id"], "answerable": o["answerable"], "fact": o["fact"], "rows": rows})
    return questions


def features(question_text, rows, lm=None):
    q = words(question_text)
    out = []
    for i, s in enumerate(rows):
        w = words(s["text"])
        f = [
            s["score"],
            s["cosine"],
            s["coverage"],
            float(s["paired"]),
            float(s["second_hop"]),
            s["chunk_relevance"],
            s["chunk_lexical"],
            len(w - q) / max(len(w), 1),  # share of its words the question does not have
            len(w & q) / max(len(q), 1),  # share of the question's words it has
            math.log(max(len(s["text"].split()), 1)),
            float(i),
        ]
        if lm is not None:
            f += lm(question_text, s["text"])
        out.append(f)
    width = 11 + (2 if lm is not None else 0)
    return np.array(out, dtype=float).reshape(len(rows), width)


def fit_logistic(x, y, l2=1.0, steps=3000, lr=0.5):
    mu, sd = x.mean(0), x.std(0) + 1e-9
    z = (x - mu) / sd
    w = np.zeros(z.shape[1])
    b = 0.0
    pos = y.mean()
    weight = np.where(y, 0.5 / max(pos, 1e-9), 0.5 / max(1 - pos, 1e-9))
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = (p - y) * weight
        w -= lr * (z.T @ g / len(y) + l2 * w / len(y))
        b -= lr * g.mean()
    return lambda v: ((v - mu) / sd) @ w + b


def ranking(sets, names):
    def at(scores, q):
        order = np.argsort(-scores, kind="stable")
        y = q["y"]
        return bool(y[order[0]]), bool(y[order[:2]].any())

    print("\n1. Ranking: answerable questions whose best (best two) quotable sentences hold an expected string")
    print(f"{'held-out set':14s} {'ragd score':>14s} {'learned':>14s} {'any sentence':>13s}")
    for held in names:
        train = [q for n in names if n != held for q in sets[n] if q["answerable"] and len(q["rows"])]
        x = np.vstack([q["x"] for q in train])
        y = np.concatenate([q["y"] for q in train]).astype(float)
        model = fit_logistic(x, y)
        test = [q for q in sets[held] if q["answerable"]]
        base = [at(q["x"][:, 0], q) if len(q["rows"]) else (False, False) for q in test]
        learned = [at(model(q["x"]), q) if len(q["rows"]) else (False, False) for q in test]
        oracle = sum(bool(len(q["rows"]) and q["y"].any()) for q in test)
        n = len(test)
        fmt = lambda r: f"{sum(a for a, _ in r) / n:5.1%} / {sum(b for _, b in r) / n:5.1%}"
        print(f"{held:14s} {fmt(base):>14s} {fmt(learned):>14s} {oracle / n:12.1%}")


def answering(sets, names):
    def gate_features(q):
        s = q["x"][:, 0]
        second = s[1] if len(s) > 1 else 0.0
        return np.concatenate([q["x"][0], [second, s[0] - second, math.log(len(s))]])

    def outcome(qs, keep):
        right = sum(1 for q, k in zip(qs, keep) if k and q["answerable"] and q["fact"])
        wrong = sum(1 for q, k in zip(qs, keep) if k and q["answerable"] and not q["fact"])
        unanswerable = sum(1 for q, k in zip(qs, keep) if k and not q["answerable"])
        return right, wrong, unanswerable

    def best_cut(values, qs):
        # the cut that maximises right - wrong - 3 x unanswerable answered on the training sets
        cuts = np.unique(values)
        return max(cuts, key=lambda c: (lambda r, w, u: r - w - 3 * u)(*outcome(qs, values >= c)))

    print("\n2. Answering: (right, wrong, unanswerable answered), the cut chosen on the other two sets")
    print(f"{'held-out set':14s} {'score >= cut':>16s} {'learned':>16s}")
    for held in names:
        train = [q for n in names if n != held for q in sets[n] if len(q["rows"])]
        test = [q for q in sets[held] if len(q["rows"])]
        score_cut = best_cut(np.array([q["x"][0, 0] for q in train]), train)
        base = outcome(test, [q["x"][0, 0] >= score_cut for q in test])
        x = np.array([gate_features(q) for q in train])
        y = np.array([q["answerable"] and q["fact"] for q in train], dtype=float)
        model = fit_logistic(x, y)
        cut = best_cut(model(x), train)
        learned = outcome(test, model(np.array([gate_features(q) for q in test])) >= cut)
        print(f"{held:14s} {str(base):>16s} {str(learned):>16s}")


def decoder_likelihoods(path):
    from llama_cpp import Llama

    llm = Llama(model_path=path, logits_all=True, n_ctx=1024, n_threads=2, verbose=False)
    cache = {}

    def logprob(prefix, target):
        key = (prefix, target)
        if key not in cache:
            p = llm.tokenize(prefix.encode(), add_bos=True)
            t = llm.tokenize(target.encode(), add_bos=False)
            toks = (p + t)[:1000]
            llm.reset()
            llm.eval(toks)
            scores = np.array(llm.scores[: len(toks)])
            total = 0.0
            for i in range(len(p), len(toks)):
                row = scores[i - 1]
                total += row[toks[i]] - (row.max() + np.log(np.exp(row - row.max()).sum()))
            cache[key] = (total, max(len(toks) - len(p), 1))
        return cache[key]

    def lm(question, sentence):
        q0, qn = logprob("Question: ", question)
        q1, _ = logprob(f"Passage: {sentence}\nQuestion: ", question)
        a1, an = logprob(f"Question: {question}\nAnswer: ", sentence)
        a0, _ = logprob("Answer: ", sentence)
        return [(q1 - q0) / qn, (a1 - a0) / an]

    return lm


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("reports", nargs="+",
                    help="ragd eval answers --min-extract 0 --explain --json output, one per set")
    ap.add_argument("--questions", nargs="*", help="the question files, in the same order (default: "
                    "tests/data/answers/<set>/dev.jsonl, the set named in the report's file name)")
    ap.add_argument("--decoder", help="GGUF file: add the decoder's likelihood features")
    args = ap.parse_args()
    lm = decoder_likelihoods(args.decoder) if args.decoder else None
    sets, names = {}, []
    for i, path in enumerate(args.reports):
        name = next((n for n in ("markdown", "encyclopedic", "scientific") if n in path), path)
        qpath = args.questions[i] if args.questions else f"tests/data/answers/{name}/dev.jsonl"
        texts = {}
        for line in open(qpath):
            item = json.loads(line)
            texts[item["id"]] = item["question"]
        qs = load(path)
        for q in qs:
            q["x"] = features(texts[q["id"]], q["rows"], lm)
            q["y"] = np.array([r["holds_expected"] for r in q["rows"]], dtype=bool)
        sets[name] = qs
        names.append(name)
    ranking(sets, names)
    answering(sets, names)


if __name__ == "__main__":
    main()
