//! Criterion benches of the model kernels we tune: one encoder batch of RAG-sized chunks, one
//! decoder prefill chunk and one decode step deep into a long prompt.
//! Needs the default models (`ragd models fetch`). Run: `cargo bench -p ragd-models`.

use criterion::{Criterion, criterion_group, criterion_main};
use ragd_models::Embedder;
use ragd_models::llama::LlamaWeights;
use ragd_models::registry::{self, DEFAULT_DECODER, DEFAULT_ENCODER};
use std::hint::black_box;

fn encoder(c: &mut Criterion) {
    let dir = registry::resolve_models_dir(None);
    let e = Embedder::load(&DEFAULT_ENCODER.dir(&dir)).expect("default encoder installed");
    // ~250 tokens each, like a chunk of a scientific abstract.
    let text =
        "Mitochondrial dysfunction alters cellular energy metabolism and signalling. ".repeat(22);
    let texts: Vec<&str> = (0..32).map(|_| text.as_str()).collect();
    let mut g = c.benchmark_group("encoder");
    g.sample_size(10);
    g.bench_function("batch_32x256", |b| {
        b.iter(|| black_box(e.embed(&texts).expect("embed")))
    });
    g.finish();
}

fn decoder(c: &mut Criterion) {
    let dir = registry::resolve_models_dir(None);
    let w =
        LlamaWeights::open(&DEFAULT_DECODER.gguf_path(&dir)).expect("default decoder installed");
    let prompt: Vec<u32> = (0..512u32).map(|i| 1000 + (i * 37) % 20000).collect();
    let mut g = c.benchmark_group("decoder");
    g.sample_size(10);
    g.bench_function("prefill_512", |b| {
        let mut st = w.new_state(2048);
        b.iter(|| {
            st.reset();
            black_box(w.forward(&prompt, &mut st).expect("forward"))
        })
    });
    g.bench_function("decode_step_at_1024", |b| {
        let mut st = w.new_state(4096);
        w.forward(&prompt, &mut st).expect("forward");
        w.forward(&prompt, &mut st).expect("forward");
        b.iter(|| {
            let logits = w.forward(&[42], &mut st).expect("forward");
            // Stay at the same depth: rewind the one token just added.
            st.rewind(1);
            black_box(logits)
        })
    });
    g.finish();
}

criterion_group!(benches, encoder, decoder);
criterion_main!(benches);
