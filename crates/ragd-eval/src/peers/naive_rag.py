"""The naive RAG peer of `ragd eval answers --compare`: the same chunks and the same SmolLM2 GGUF as
ragd, dense top-2 passages by all-MiniLM-L6-v2 (sentence-transformers), LlamaIndex's default
question-answering prompt, greedy decoding through llama.cpp (llama-cpp-python).

usage: naive_rag.py --chunks CHUNKS.jsonl --questions Q.jsonl --gguf MODEL.gguf --encoder DIR
       [--top-k 2] [--max-tokens 160] [--threads 2]
CHUNKS.jsonl: {"id", "document_id", "text"} per line (text as ragd embeds it: title + chunk).
Q.jsonl: {"id", "question"} per line. Prints one JSON line per question:
{"id", "answer", "documents": [ids of the passages given], "ttft_ms", "total_ms"}."""
import argparse, json, time

import numpy as np
from llama_cpp import Llama
from sentence_transformers import SentenceTransformer

# LlamaIndex's DEFAULT_TEXT_QA_PROMPT_TMPL (llama_index.core.prompts.default_prompts).
QA_TEMPLATE = (
    "Context information is below.\n"
    "---------------------\n"
    "{context_str}\n"
    "---------------------\n"
    "Given the context information and not prior knowledge, answer the query.\n"
    "Query: {query_str}\n"
    "Answer: "
)

p = argparse.ArgumentParser()
p.add_argument("--chunks", required=True)
p.add_argument("--questions", required=True)
p.add_argument("--gguf", required=True)
p.add_argument("--encoder", required=True)
p.add_argument("--top-k", type=int, default=2)
p.add_argument("--max-tokens", type=int, default=160)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

chunks = [json.loads(l) for l in open(a.chunks, encoding="utf-8") if l.strip()]
questions = [json.loads(l) for l in open(a.questions, encoding="utf-8") if l.strip()]
encoder = SentenceTransformer(a.encoder, device="cpu")
matrix = encoder.encode([c["text"] for c in chunks], batch_size=32, normalize_embeddings=True,
                        convert_to_numpy=True)
llm = Llama(model_path=a.gguf, n_ctx=4096, n_threads=a.threads, n_threads_batch=a.threads,
            n_batch=512, verbose=False)

for q in questions:
    start = time.perf_counter()
    qv = encoder.encode([q["question"]], normalize_embeddings=True, convert_to_numpy=True)[0]
    top = np.argsort(-(matrix @ qv))[: a.top_k]
    context = "\n\n".join(chunks[i]["text"] for i in top)
    prompt = QA_TEMPLATE.format(context_str=context, query_str=q["question"])
    ttft, parts = None, []
    for piece in llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], temperature=0.0, top_k=1,
        max_tokens=a.max_tokens, stream=True,
    ):
        delta = piece["choices"][0]["delta"].get("content")
        if delta:
            if ttft is None:
                ttft = (time.perf_counter() - start) * 1e3
            parts.append(delta)
    print(json.dumps({
        "id": q["id"],
        "answer": "".join(parts).strip(),
        "documents": [chunks[i]["document_id"] for i in top],
        "ttft_ms": ttft,
        "total_ms": (time.perf_counter() - start) * 1e3,
    }), flush=True)
