#!/usr/bin/env python3
"""Validate the answer-quality QA sets under tests/data/answers/ (stdlib only).

Usage: python3 tests/data/answers/check.py   (exit status 0 when every check passes)

For each set directory (markdown, encyclopedic, scientific) it checks corpus.jsonl,
dev.jsonl and test.jsonl:
  * every line is a JSON object with the expected fields and types;
  * corpus `_id`s are unique; question ids are unique across all sets and splits;
  * dev and test share no question id and no question text;
  * answerable: `document` names a corpus document; `expect` is a non-empty list of
    strings, each occurring as a whole term in that document's text (case-insensitive,
    not glued to a letter or digit on either side). The first string (the gold answer)
    must occur verbatim; for the further variants runs of whitespace compare equal,
    since Markdown text is hard-wrapped. `passage` occurs verbatim in the document
    and contains the first `expect` string as a verbatim whole term;
  * offtopic / nearmiss: `document` is null, `expect` is [] and `passage` is null.
It prints counts per set, split and kind, and a few corpus statistics.
"""
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SETS = ["markdown", "encyclopedic", "scientific"]
SPLITS = ["dev", "test"]
KINDS = ["answerable", "offtopic", "nearmiss"]
MAX_TOTAL_BYTES = 6 * 1024 * 1024

errors = []


def err(msg):
    errors.append(msg)


def norm_ws(s):
    return re.sub(r"\s+", " ", s)


def whole_term(needle, hay, normalise=True):
    """True if `needle` occurs in `hay` case-insensitively, with no letter or digit
    directly before or after it (with normalise, runs of whitespace compare equal)."""
    n = needle.lower()
    h = hay.lower()
    if normalise:
        n = norm_ws(n).strip()
        h = norm_ws(h)
    if not n:
        return False
    start = 0
    while True:
        i = h.find(n, start)
        if i < 0:
            return False
        before = h[i - 1] if i > 0 else ""
        after = h[i + len(n)] if i + len(n) < len(h) else ""
        if not before.isalnum() and not after.isalnum():
            return True
        start = i + 1


def read_jsonl(path):
    rows = []
    if not os.path.exists(path):
        err("%s: missing" % path)
        return rows
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                err("%s:%d: blank line" % (path, ln))
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                err("%s:%d: invalid JSON (%s)" % (path, ln, e))
                continue
            if not isinstance(obj, dict):
                err("%s:%d: not a JSON object" % (path, ln))
                continue
            rows.append((ln, obj))
    return rows


def check_set(name, all_qids):
    d = os.path.join(HERE, name)
    cpath = os.path.join(d, "corpus.jsonl")
    docs = {}
    for ln, o in read_jsonl(cpath):
        where = "%s:%d" % (cpath, ln)
        for k in ("_id", "title", "text"):
            if not isinstance(o.get(k), str):
                err("%s: field %r missing or not a string" % (where, k))
        if not isinstance(o.get("_id"), str):
            continue
        if o["_id"] in docs:
            err("%s: duplicate _id %r" % (where, o["_id"]))
        if not (o.get("text") or "").strip():
            err("%s: empty text" % where)
        docs[o["_id"]] = o
    counts = {}
    texts = {}
    golds = {}
    for split in SPLITS:
        qpath = os.path.join(d, split + ".jsonl")
        counts[split] = {k: 0 for k in KINDS}
        texts[split] = set()
        golds[split] = set()
        for ln, q in read_jsonl(qpath):
            where = "%s:%d" % (qpath, ln)
            for k in ("id", "question", "document", "expect", "passage", "kind"):
                if k not in q:
                    err("%s: field %r missing" % (where, k))
            qid, kind = q.get("id"), q.get("kind")
            if not isinstance(qid, str) or not qid:
                err("%s: id missing or not a string" % where)
            elif qid in all_qids:
                err("%s: duplicate id %r (also in %s)" % (where, qid, all_qids[qid]))
            else:
                all_qids[qid] = "%s/%s" % (name, split)
            if not isinstance(q.get("question"), str) or not q.get("question").strip():
                err("%s: empty question" % where)
            else:
                texts[split].add(norm_ws(q["question"]).strip().lower())
            if kind not in KINDS:
                err("%s: kind %r not one of %s" % (where, kind, KINDS))
                continue
            counts[split][kind] += 1
            exp, doc_id, passage = q.get("expect"), q.get("document"), q.get("passage")
            if kind == "answerable":
                if doc_id not in docs:
                    err("%s: document %r not in corpus" % (where, doc_id))
                    continue
                golds[split].add(doc_id)
                text = docs[doc_id]["text"]
                if not isinstance(exp, list) or not exp or not all(isinstance(e, str) and e.strip() for e in exp):
                    err("%s: expect must be a non-empty list of non-empty strings" % where)
                    continue
                if not whole_term(exp[0], text, normalise=False):
                    err("%s: first expect %r is not a verbatim whole term of document %r" % (where, exp[0], doc_id))
                for e in exp[1:]:
                    if not whole_term(e, text):
                        err("%s: expect %r is not a whole term of document %r" % (where, e, doc_id))
                if not isinstance(passage, str) or not passage:
                    err("%s: answerable question without passage" % where)
                elif passage not in text:
                    err("%s: passage does not occur verbatim in document %r" % (where, doc_id))
                elif not whole_term(exp[0], passage, normalise=False):
                    err("%s: first expect %r not in passage" % (where, exp[0]))
            else:
                if doc_id is not None:
                    err("%s: %s question must have document null" % (where, kind))
                if exp != []:
                    err("%s: %s question must have expect []" % (where, kind))
                if passage is not None:
                    err("%s: %s question must have passage null" % (where, kind))
    same = texts["dev"] & texts["test"]
    if same:
        err("%s: %d question texts occur in both dev and test: %s" % (name, len(same), sorted(same)[:3]))
    sizes = sorted(len(o["text"].encode("utf-8")) for o in docs.values() if isinstance(o.get("text"), str))
    shared_gold = golds["dev"] & golds["test"]
    return counts, len(docs), sizes, shared_gold


def main():
    all_qids = {}
    total = {k: 0 for k in KINDS}
    print("%-13s %-5s %10s %8s %8s %6s" % ("set", "split", "answerable", "offtopic", "nearmiss", "total"))
    info = []
    for name in SETS:
        counts, ndocs, sizes, shared_gold = check_set(name, all_qids)
        for split in SPLITS:
            c = counts[split]
            for k in KINDS:
                total[k] += c[k]
            print("%-13s %-5s %10d %8d %8d %6d" % (name, split, c["answerable"], c["offtopic"], c["nearmiss"], sum(c.values())))
        if sizes:
            info.append("%s: %d documents, %d..%d bytes each (median %d); gold documents shared by dev and test: %d"
                        % (name, ndocs, sizes[0], sizes[-1], sizes[len(sizes) // 2], len(shared_gold)))
    print("%-13s %-5s %10d %8d %8d %6d" % ("all", "", total["answerable"], total["offtopic"], total["nearmiss"], sum(total.values())))
    for line in info:
        print(line)
    size = 0
    for root, _, files in os.walk(HERE):
        for fn in files:
            size += os.path.getsize(os.path.join(root, fn))
    print("total size of %s: %.2f MiB" % (os.path.basename(HERE), size / 1048576.0))
    if size > MAX_TOTAL_BYTES:
        err("total size %d bytes exceeds %d" % (size, MAX_TOTAL_BYTES))
    if errors:
        for e in errors:
            print("ERROR:", e)
        print("%d error(s)" % len(errors))
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
