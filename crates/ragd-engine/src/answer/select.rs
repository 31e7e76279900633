//! Retrieval, the relevance gate, sentence selection inside chunks, the second hop and the
//! quoted extract: everything [`Answerer::prepare`] decides before the decoder.

use super::*;
use std::collections::HashMap;

impl Extract {
    /// The quote as an answer, when it scores at least `min_extract`.
    pub(super) fn answer(
        &self,
        sources: &[Source],
        min_extract: f32,
        mut usage: AnswerUsage,
        started: Instant,
    ) -> Option<Answer> {
        if self.score < min_extract {
            return None;
        }
        let text = self
            .parts
            .iter()
            .map(|q| format!("\u{201c}{}\u{201d} [{}]", quote_text(&q.text), q.marker))
            .collect::<Vec<_>>()
            .join(" ");
        let markers = crate::parse_citations(&text);
        let (citations, _) = resolve(&text, &markers, sources);
        usage.total_ms = ms(started);
        // The quote is the first (and only) text the caller receives.
        usage.time_to_first_token_ms = usage.total_ms;
        usage.sources = sources.len();
        Some(Answer {
            answer: text,
            kind: AnswerKind::Extract,
            support: self
                .parts
                .iter()
                .map(|q| SentenceSupport {
                    sentence: q.text.clone(),
                    supported: true,
                    score: q.score,
                    marker: Some(q.marker),
                    document_id: Some(q.document_id.clone()),
                    start: q.start,
                    end: q.end,
                    missing: Vec::new(),
                    on_question: true,
                })
                .collect(),
            refused: false,
            cited: !citations.is_empty(),
            citations,
            dropped_markers: 0,
            sources: sources.to_vec(),
            finish: None,
            unsupported_draft: None,
            grounding: None,
            usage,
        })
    }
}

impl Gated {
    pub(super) fn new(hit: Hit, relevance: f32, terms: &QueryTerms) -> Self {
        let lexical = if terms.is_empty() {
            0.0
        } else {
            let mut t = evidence::term_set(&hit.text);
            t.extend(evidence::term_set(&hit.title));
            terms.coverage(&t)
        };
        Self {
            hit,
            relevance,
            lexical,
            link: None,
        }
    }
}

impl<'a> Answerer<'a> {
    /// An answerer over `searcher`'s collection with `generator`.
    pub fn new(searcher: &'a Searcher, generator: &'a Generator, config: &'a AnswerConfig) -> Self {
        Self {
            searcher,
            generator,
            config,
        }
    }

    /// Retrieves, gates, selects and packs (blocking). Validates the request first.
    #[tracing::instrument(level = "debug", name = "prepare", skip_all,
        fields(collection = self.searcher.collection().name()))]
    pub fn prepare(&self, request: AnswerRequest) -> Result<Prepared> {
        let started = Instant::now();
        validate(&request)?;
        let config = self.config.clone();
        let budget = self
            .generator
            .context()
            .min(config.max_prompt_tokens + request.max_tokens)
            .saturating_sub(request.max_tokens);
        // The question must fit on its own, whatever is retrieved.
        question_fits(self.generator, &request.question, budget)?;
        let min_relevance = request.min_relevance.unwrap_or(config.min_relevance);
        let mut search = request.search.clone();
        search.top_k = search.top_k.min(config.max_sources.max(1));
        let query = retrieval_query(&request.question, &request.history);
        let qv = self.searcher.embed_query(&query)?;
        let hits = self.searcher.search(&query, Some(&qv), &search)?;
        let relevance = self.relevance(&qv, &hits)?;
        let collection = self.searcher.collection();
        let terms = QueryTerms::new(collection, &query)?;
        check_deadline(request.deadline)?;
        let mut usage = AnswerUsage {
            encoder: self.searcher.embedder().name().to_string(),
            decoder: self.generator.name().to_string(),
            index_generation: collection.manifest().generation,
            published_generation: self
                .searcher
                .published()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            ..AnswerUsage::default()
        };
        // The gate: dense similarity, lexical coverage of the question's rare terms, or the
        // question naming the chunk's document ("Drew Fuller starred in a series that …": his
        // page is about him, however little of it matches the rest of the question).
        let question = request.question.as_str();
        let relevant: Vec<Gated> = hits
            .into_iter()
            .zip(relevance)
            .map(|(hit, relevance)| Gated::new(hit, relevance, &terms))
            .filter(|g| {
                g.relevance >= min_relevance
                    || g.lexical >= config.min_lexical
                    || writes_name(question, document_name(&g.hit.title))
            })
            .collect();
        let mut candidates = self.select(&qv, &terms, question, relevant, &config)?;
        if config.second_hop {
            let more = self.second_hop(&qv, &query, &terms, &candidates, &search)?;
            candidates.extend(self.select(&qv, &terms, question, more, &config)?);
            candidates.sort_by(|a, b| b.best.total_cmp(&a.best));
        }
        let packed = if candidates.is_empty() {
            None
        } else {
            Some(pack(
                self.generator,
                &request.question,
                &request.history,
                &candidates,
                budget,
            )?)
        };
        let (sources, messages, prompt_tokens) = match packed {
            Some(p) if !p.sources.is_empty() => (p.sources, p.messages, p.tokens),
            _ => (Vec::new(), Vec::new(), 0),
        };
        let extract = best_extract(&request.question, &candidates, &sources);
        let scored = if request.explain {
            scored_sentences(&request.question, &candidates, &sources)
        } else {
            Vec::new()
        };
        let mut ranked = ranked_sentences(&candidates, &sources);
        ranked.truncate(config.on_question);
        usage.retrieval_ms = ms(started);
        let mut prepared = Prepared {
            sources,
            ready: None,
            extract,
            ranked,
            scored,
            messages,
            prompt_tokens,
            request,
            usage,
            started,
            config,
        };
        if prepared.sources.is_empty() {
            prepared.ready = Some(prepared.refusal());
        } else if prepared.config.strategy == Strategy::Extract {
            prepared.ready = Some(match prepared.extract_answer() {
                Some(a) => a,
                None => prepared.refusal(),
            });
        }
        Ok(prepared)
    }

    /// The second hop of a question that names its subject only through something else ("the
    /// sitcom on which Jean Vander Pyl voiced Rosie"): the best sentence of each of the first
    /// hop's best chunks is added to the query ("… she voiced Rosie on The Jetsons") and the
    /// collection searched again; the best [`HOP_HITS`] new chunks of each search are kept. A
    /// chunk found this way joins the candidates when it is in another document and the
    /// sentence that led to it names that document (writes its title, less a disambiguation in
    /// parentheses), or, failing that, when the chunk names the first chunk's document ("She is
    /// the daughter of the actor Paul Gross": a link back, whose linking sentence is the first
    /// chunk's best): the link makes it relevant whatever its own similarity to the question,
    /// and its sentences are scored together with the linking one (see `select`).
    #[tracing::instrument(level = "debug", skip_all)]
    pub(super) fn second_hop(
        &self,
        qv: &[f32],
        query: &str,
        terms: &QueryTerms,
        first: &[Candidate],
        search: &SearchParams,
    ) -> Result<Vec<Gated>> {
        let mut seen: HashSet<u64> = first.iter().map(|c| c.hit.chunk_id).collect();
        let mut params = search.clone();
        params.top_k = HOP_HITS + first.len();
        let mut linked: Vec<(Hit, Link)> = Vec::new();
        for c in first.iter().take(BRIDGES) {
            let first_title = evidence::term_set(&c.hit.title);
            let sentences: Vec<(usize, usize, f32, HashSet<String>)> = c
                .sentences
                .iter()
                .map(|&(s, e, score)| (s, e, score, evidence::term_set(&c.hit.text[s..e])))
                .collect();
            // The question with the chunk's best sentence, and with its whole packed window
            // (which may name the document in another sentence).
            let best = sentences.iter().max_by(|a, b| a.2.total_cmp(&b.2));
            let mut hits = Vec::new();
            for extra in [best.map(|x| (x.0, x.1)), Some((c.start, c.end))]
                .into_iter()
                .flatten()
            {
                let hop = format!("{query} {}", &c.hit.text[extra.0..extra.1]);
                let v = self.searcher.embed_query(&hop)?;
                let found = self.searcher.search(&hop, Some(&v), &params)?;
                hits.extend(
                    found
                        .into_iter()
                        .filter(|h| !seen.contains(&h.chunk_id))
                        .take(HOP_HITS),
                );
            }
            let first_name = document_name(&c.hit.title);
            for hit in hits {
                // A bridge leads to another document: a sentence naming its own document's
                // title is about that document, not a link out of it.
                if seen.contains(&hit.chunk_id) || hit.doc_id == c.hit.doc_id {
                    continue;
                }
                // The best sentence of the first chunk that names the document; or, when the
                // hit names the first chunk's document ("She is the daughter of … Paul Gross"
                // for a question about Paul Gross's role), the first chunk's best sentence.
                let name = document_name(&hit.title);
                let forward = sentences
                    .iter()
                    .filter(|x| writes_name(&c.hit.text[x.0..x.1], name))
                    .max_by(|a, b| a.2.total_cmp(&b.2));
                let backward = || best.filter(|_| writes_name(&hit.text, first_name));
                let Some((s, e, _, words)) = forward.or_else(backward) else {
                    continue;
                };
                seen.insert(hit.chunk_id);
                let mut known = words.clone();
                known.extend(first_title.iter().cloned());
                linked.push((
                    hit,
                    Link {
                        chunk_id: c.hit.chunk_id,
                        start: *s,
                        end: *e,
                        text: c.hit.text[*s..*e].to_string(),
                        terms: known,
                        title: first_title.clone(),
                    },
                ));
            }
        }
        let (hits, links): (Vec<Hit>, Vec<Link>) = linked.into_iter().unzip();
        let relevance = self.relevance(qv, &hits)?;
        Ok(hits
            .into_iter()
            .zip(links)
            .zip(relevance)
            .map(|((hit, link), relevance)| {
                let mut g = Gated::new(hit, relevance, terms);
                g.link = Some(link);
                g
            })
            .collect())
    }

    /// Scores the sentences of each relevant chunk against the question (encoder similarity
    /// and lexical coverage, equally weighted), picks the window to pack around the best one
    /// that can hold what `question` asks for (a number, a name) and orders the chunks by their
    /// best sentence.
    #[tracing::instrument(level = "debug", skip_all)]
    pub(super) fn select(
        &self,
        qv: &[f32],
        terms: &QueryTerms,
        question: &str,
        relevant: Vec<Gated>,
        config: &AnswerConfig,
    ) -> Result<Vec<Candidate>> {
        let spans: Vec<Vec<(usize, usize)>> = relevant
            .iter()
            .map(|g| {
                let mut s = evidence::sentences(&g.hit.text);
                s.truncate(MAX_SENTENCES);
                s
            })
            .collect();
        // Each chunk's sentences, then the sentence that linked to it on a second hop.
        let texts: Vec<String> = relevant
            .iter()
            .zip(&spans)
            .flat_map(|(g, sp)| {
                sp.iter()
                    .map(|&(s, e)| g.hit.text[s..e].to_string())
                    .chain(g.link.iter().map(|l| l.text.clone()))
            })
            .collect();
        let vectors = if texts.is_empty() {
            Vec::new()
        } else {
            self.searcher.embedder().encode(texts)?
        };
        let mut vectors = vectors.into_iter();
        let expects = evidence::expects(question);
        let sets: Vec<Vec<HashSet<String>>> = relevant
            .iter()
            .zip(&spans)
            .map(|(g, sp)| {
                sp.iter()
                    .map(|&(s, e)| evidence::term_set(&g.hit.text[s..e]))
                    .collect()
            })
            .collect();
        // Within a document, a question term most of its retrieved sentences share is its
        // topic ("Diamond Princess" in a paper on that ship), one few sentences hold is what
        // tells them apart ("peak"): counted over all the document's retrieved chunks.
        let mut by_document: HashMap<&str, Vec<&HashSet<String>>> = HashMap::new();
        for (g, s) in relevant.iter().zip(&sets) {
            by_document.entry(&g.hit.doc_id).or_default().extend(s);
        }
        let freqs: HashMap<String, evidence::SentenceFreqs> = by_document
            .into_iter()
            .map(|(d, s)| (d.to_string(), evidence::SentenceFreqs::new(s)))
            .collect();
        let mut out = Vec::with_capacity(relevant.len());
        for ((g, sp), sets) in relevant.into_iter().zip(spans).zip(sets) {
            let Gated {
                hit,
                relevance,
                lexical,
                link,
            } = g;
            // Within a document, the title's words are what every sentence is about: a sentence
            // is scored on the question's other terms ("warden" in "Who is the warden of the
            // Gorsel Hut?" over a document titled "The Gorsel Hut").
            let title = evidence::term_set(&hit.title);
            let local = &freqs[&hit.doc_id];
            let focus = terms.focus(&title).scaled(|t| local.weight(t));
            // (start, end, cosine, coverage, plain score, terms)
            let scored: Vec<(usize, usize, f32, f32, f32, HashSet<String>)> = sp
                .iter()
                .zip(sets)
                .map(|(&(s, e), t)| {
                    let cos = vectors
                        .next()
                        .map_or(0.0, |v| ragd_store::dot(qv, &v.vector));
                    let coverage = focus.coverage(&t);
                    (s, e, cos, coverage, sentence_score(cos, coverage), t)
                })
                .collect();
            let parts: Vec<(f32, f32)> = scored.iter().map(|x| (x.2, x.3)).collect();
            // On a second hop, a sentence that answers what the linking sentence leaves open
            // is scored as the pair: the pair's coverage of the question (both documents'
            // titles known) and the closer of the two to it.
            let (link, chained) = match link {
                Some(l) => {
                    let cos_link = vectors
                        .next()
                        .map_or(0.0, |v| ragd_store::dot(qv, &v.vector));
                    let mut known = title.clone();
                    known.extend(l.title.iter().cloned());
                    let both = terms.focus(&known).scaled(|t| local.weight(t));
                    let alone = both.coverage(&l.terms);
                    let chained: Vec<Option<f32>> = scored
                        .iter()
                        .map(|(_, _, cos, _, _, t)| {
                            let mut pair = t.clone();
                            pair.extend(l.terms.iter().cloned());
                            let c = both.coverage(&pair);
                            (c > alone).then(|| sentence_score(cos.max(cos_link), c))
                        })
                        .collect();
                    (Some(l), chained)
                }
                None => (None, vec![None; scored.len()]),
            };
            let sentences: Vec<(usize, usize, f32)> = scored
                .iter()
                .zip(&chained)
                .map(|((s, e, .., plain, _), pair)| {
                    (*s, *e, pair.map_or(*plain, |p| p.max(*plain)))
                })
                .collect();
            let chained: Vec<bool> = scored
                .iter()
                .zip(&chained)
                .map(|((.., plain, _), pair)| pair.is_some_and(|p| p > *plain))
                .collect();
            let best = sentences.iter().map(|s| s.2).fold(0.0f32, f32::max);
            let fitting: Vec<bool> = sentences
                .iter()
                .map(|&(s, e, _)| evidence::fits(expects, &hit.text[s..e], question))
                .collect();
            let (start, end) = window(&hit.text, &sentences, &fitting, config.source_bytes);
            out.push(Candidate {
                hit,
                relevance,
                lexical,
                start,
                end,
                sentences,
                parts,
                best,
                link,
                chained,
            });
        }
        out.sort_by(|a, b| b.best.total_cmp(&a.best));
        Ok(out)
    }

    /// The collection answers come from.
    pub fn collection(&self) -> &Collection {
        self.searcher.collection()
    }

    /// Prepares and answers on this thread, calling `on_delta` with each piece of text.
    pub fn answer_blocking(
        &self,
        request: AnswerRequest,
        on_delta: impl FnMut(&str),
    ) -> Result<Answer> {
        self.complete(self.prepare(request)?, on_delta)
    }

    /// Answers a prepared question on this thread, calling `on_delta` with each piece of text.
    pub fn complete(&self, prepared: Prepared, mut on_delta: impl FnMut(&str)) -> Result<Answer> {
        let mut stream = prepared.start(self.generator)?;
        while let Some(ev) = stream.blocking_next() {
            match ev? {
                AnswerEvent::Delta(d) => on_delta(&d),
                AnswerEvent::Done(a) => return Ok(*a),
            }
        }
        Err(Error::Model(ragd_models::Error::WorkerGone("generator")))
    }

    /// Cosine between the query vector and each hit's stored vector.
    pub(super) fn relevance(&self, qv: &[f32], hits: &[Hit]) -> Result<Vec<f32>> {
        let ids: Vec<u64> = hits.iter().map(|h| h.chunk_id).collect();
        let vectors: HashMap<u64, Vec<f32>> = self
            .searcher
            .collection()
            .vectors(&ids)?
            .into_iter()
            .collect();
        Ok(hits
            .iter()
            .map(|h| {
                h.dense_score.unwrap_or_else(|| {
                    vectors
                        .get(&h.chunk_id)
                        .map_or(0.0, |v| ragd_store::dot(qv, v))
                })
            })
            .collect())
    }
}

/// The name a document's title gives it, as a sentence that links to the document writes it:
/// the title without its disambiguation ("David Smith" for "David Smith (director)").
fn document_name(title: &str) -> &str {
    let t = title.trim();
    match t.strip_suffix(')').and_then(|x| x.rfind(" (")) {
        Some(i) if i > 0 => t[..i].trim_end(),
        _ => t,
    }
}

/// True when `text` writes `name` as it is written (case and all) as whole words, as a proper
/// name: one of several words or with a capital or a digit inside ("Drew Fuller", "ANU"), or
/// one capitalised word that does not open `text` ("… the series \"Charmed\"", not
/// "Installation is …").
fn writes_name(text: &str, name: &str) -> bool {
    let inner = name.contains(' ')
        || name
            .chars()
            .skip(1)
            .any(|c| c.is_uppercase() || c.is_ascii_digit());
    let capital = name.chars().next().is_some_and(char::is_uppercase);
    if name.len() < 2 || !(inner || capital) {
        return false;
    }
    let word = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(name).any(|(i, _)| {
        (inner || i > 0)
            && !word(text[..i].chars().next_back())
            && !word(text[i + name.len()..].chars().next())
    })
}

/// A sentence's score for a question: encoder cosine and weighted term coverage, coverage
/// weighing a little more (chosen on the dev splits: 0.4 / 0.6 against 0.3–0.6 for cosine).
pub(super) fn sentence_score(cos: f32, coverage: f32) -> f32 {
    COSINE_WEIGHT * cos.max(0.0) + (1.0 - COSINE_WEIGHT) * coverage
}

/// The encoder cosine's share of a sentence's score.
const COSINE_WEIGHT: f32 = 0.4;

/// The window of whole sentences to pack: the best sentence among those that can hold the
/// answer (`fitting`; among all when none can), then its neighbours (the one before first,
/// which often names the subject) while the window stays within `max_bytes`. The whole text
/// when it fits or when `max_bytes` is 0.
pub(super) fn window(
    text: &str,
    sentences: &[(usize, usize, f32)],
    fitting: &[bool],
    max_bytes: usize,
) -> (usize, usize) {
    if max_bytes == 0 || text.trim().len() <= max_bytes || sentences.is_empty() {
        return (0, text.len());
    }
    let any_fits = fitting.iter().any(|f| *f);
    let best = (0..sentences.len())
        .filter(|&i| !any_fits || fitting.get(i).copied().unwrap_or(false))
        .max_by(|&a, &b| sentences[a].2.total_cmp(&sentences[b].2).then(b.cmp(&a)))
        .unwrap_or(0);
    let (mut lo, mut hi) = (best, best);
    loop {
        let mut grew = false;
        for next in [lo.checked_sub(1), Some(hi + 1)] {
            let Some(n) = next.filter(|&n| n < sentences.len()) else {
                continue;
            };
            let (a, b) = (lo.min(n), hi.max(n));
            if sentences[b].1 - sentences[a].0 <= max_bytes {
                (lo, hi) = (a, b);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    (sentences[lo].0, sentences[hi].1)
}

/// The packed sources' sentences by their question score, best first: `(marker, start, end)`
/// in document bytes.
pub(super) fn ranked_sentences(
    candidates: &[Candidate],
    sources: &[Source],
) -> Vec<(usize, usize, usize)> {
    let mut all: Vec<(f32, usize, usize, usize)> = packed_sentences(candidates, sources)
        .map(|(src, c, k)| {
            let (s, e, score) = c.sentences[k];
            (score, src.marker, c.hit.start + s, c.hit.start + e)
        })
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    all.into_iter().map(|(_, m, s, e)| (m, s, e)).collect()
}

/// Each packed source with its candidate chunk and the index of each of the chunk's sentences
/// inside the packed window.
fn packed_sentences<'c>(
    candidates: &'c [Candidate],
    sources: &'c [Source],
) -> impl Iterator<Item = (&'c Source, &'c Candidate, usize)> {
    sources.iter().flat_map(move |src| {
        let c = candidates.iter().find(|c| c.hit.chunk_id == src.chunk_id);
        c.into_iter().flat_map(move |c| {
            let (lo, hi) = (src.start - c.hit.start, src.end - c.hit.start);
            c.sentences
                .iter()
                .enumerate()
                .filter(move |(_, (s, e, _))| *s >= lo && *e <= hi)
                .map(move |(k, _)| (src, c, k))
        })
    })
}

/// Why `sentence` cannot be quoted for a question expecting `expects`, if it cannot (its
/// passage's names aside: [`names_enough`]).
fn exclusion(expects: evidence::Expects, sentence: &str, question: &str) -> Option<Exclusion> {
    if !evidence::fits(expects, sentence, question) {
        Some(Exclusion::Kind)
    } else if sentence.split_whitespace().count() < 3 || is_markup(sentence) {
        Some(Exclusion::Fragment)
    } else {
        None
    }
}

/// Every packed sentence with its score and whether [`best_extract`] may quote it, best first.
pub(super) fn scored_sentences(
    question: &str,
    candidates: &[Candidate],
    sources: &[Source],
) -> Vec<ScoredSentence> {
    let expects = evidence::expects(question);
    let named = named_chunks(question, candidates, sources);
    let mut out: Vec<ScoredSentence> = packed_sentences(candidates, sources)
        .map(|(src, c, k)| {
            let (s, e, score) = c.sentences[k];
            let (cosine, coverage) = c.parts[k];
            let text = &c.hit.text[s..e];
            ScoredSentence {
                document_id: src.document_id.clone(),
                marker: src.marker,
                start: c.hit.start + s,
                end: c.hit.start + e,
                text: text.split_whitespace().collect::<Vec<_>>().join(" "),
                score,
                cosine,
                coverage,
                paired: c.chained.get(k).copied().unwrap_or(false),
                second_hop: c.link.is_some(),
                chunk_relevance: c.relevance,
                chunk_lexical: c.lexical,
                excluded: if named.contains(&c.hit.chunk_id) {
                    exclusion(expects, text, question)
                } else {
                    Some(Exclusion::Names)
                },
            }
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// The best sentence inside the packed sources that can hold what the question asks for, in a
/// passage that names what the question names ([`names_enough`]), with
/// its neighbour where it needs one, or after the sentence that linked to its document when
/// the two answer together; a sentence quoted alone is followed by the next best one (see
/// [`ON_TOPIC_SHARE`]). Two sentences at most.
pub(super) fn best_extract(
    question: &str,
    candidates: &[Candidate],
    sources: &[Source],
) -> Option<Extract> {
    let expects = evidence::expects(question);
    let quoted = |src: &Source, c: &Candidate, (start, end): (usize, usize), score: f32| Quoted {
        marker: src.marker,
        document_id: src.document_id.clone(),
        text: c.hit.text[start..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" "),
        start: c.hit.start + start,
        end: c.hit.start + end,
        score,
    };
    // Every sentence that can be quoted, best first.
    let named = named_chunks(question, candidates, sources);
    let mut all: Vec<(f32, &Source, &Candidate, usize)> = packed_sentences(candidates, sources)
        .filter(|(_, c, k)| {
            let (s, e, _) = c.sentences[*k];
            named.contains(&c.hit.chunk_id)
                && exclusion(expects, &c.hit.text[s..e], question).is_none()
        })
        .map(|(src, c, k)| (c.sentences[k].2, src, c, k))
        .collect();
    all.sort_by(|a, b| b.0.total_cmp(&a.0));
    let &(score, src, c, k) = all.first()?;
    let (lo, hi) = (src.start - c.hit.start, src.end - c.hit.start);
    let (s, e, _) = c.sentences[k];
    let link = c
        .link
        .as_ref()
        .filter(|_| c.chained.get(k).copied().unwrap_or(false))
        .and_then(|l| linked_source(l, candidates, sources));
    let mut parts = match link {
        Some((l, ls, lc)) => vec![
            quoted(ls, lc, (l.start, l.end), score),
            quoted(src, c, (s, e), score),
        ],
        None => {
            let span = extract_span(&c.hit.text, &c.sentences, k, (lo, hi));
            vec![quoted(src, c, span, score)]
        }
    };
    // A lone sentence is followed by the runner-up, from any packed source.
    if parts.len() == 1 && parts[0].end - parts[0].start == e - s {
        let placed: Vec<(f32, &str, usize, usize)> = all
            .iter()
            .map(|&(score, src, c, k)| {
                let (a, b, _) = c.sentences[k];
                (
                    score,
                    src.document_id.as_str(),
                    c.hit.start + a,
                    c.hit.start + b,
                )
            })
            .collect();
        if let Some(i) = runner_up(&placed) {
            let (other, src2, c2, k2) = all[i];
            let (a, b, _) = c2.sentences[k2];
            parts.push(quoted(src2, c2, (a, b), other));
        }
    }
    Some(Extract { parts, score })
}

/// The packed chunks whose passage names what `question` names ([`names_enough`]).
fn named_chunks(question: &str, candidates: &[Candidate], sources: &[Source]) -> HashSet<u64> {
    let names = evidence::specific_terms(question);
    candidates
        .iter()
        .filter(|c| sources.iter().any(|s| s.chunk_id == c.hit.chunk_id))
        .filter(|c| names_enough(c, candidates, &names))
        .map(|c| c.hit.chunk_id)
        .collect()
}

/// True when the chunk and its document's title — with, on a second hop, the chunk that linked
/// to it and its title — hold all but at most [`MISSING_NAMES`] of the question's names
/// (`names`: its numbers, acronyms and capitalised words, analysed). A passage that names few
/// of them is about something else: "Do Lafzon Ki Kahani … is a remake of Always, released in
/// which year, is a South Korean film directed by Song Il-gon?" was answered from the Hindi
/// film's page, which names neither the director nor his country.
fn names_enough(c: &Candidate, candidates: &[Candidate], names: &HashSet<String>) -> bool {
    if names.len() <= MISSING_NAMES {
        return true;
    }
    let mut held = evidence::term_set(&c.hit.text);
    held.extend(evidence::term_set(&c.hit.title));
    if let Some(l) = &c.link {
        held.extend(l.terms.iter().cloned());
        if let Some(first) = candidates.iter().find(|x| x.hit.chunk_id == l.chunk_id) {
            held.extend(evidence::term_set(&first.hit.text));
        }
    }
    names.iter().filter(|n| !held.contains(*n)).count() <= MISSING_NAMES
}

/// How many of the question's names a quoted passage may lack (chosen on the dev splits: with
/// none missing, right answers whose passage writes a name differently were lost on every set;
/// one keeps them and turns wrong quotes on encyclopedic dev into refusals).
const MISSING_NAMES: usize = 1;

/// Of quotable sentences `(score, document, start, end)`, best first, the one to quote after the
/// first: the next best that scores at least [`ON_TOPIC_SHARE`] of it and does not overlap it.
/// The ranker's first choice often restates the question, the answer being in the sentence it
/// ranks next.
pub(super) fn runner_up(ranked: &[(f32, &str, usize, usize)]) -> Option<usize> {
    let &(best, doc, start, end) = ranked.first()?;
    ranked
        .iter()
        .enumerate()
        .skip(1)
        .take_while(|(_, x)| x.0 >= best * ON_TOPIC_SHARE)
        .find(|(_, x)| x.1 != doc || x.3 <= start || x.2 >= end)
        .map(|(i, _)| i)
}

/// True for a "sentence" that is only a markup tag or comment (`<Listing …>`, `<!-- … -->`):
/// no fact to quote.
pub(super) fn is_markup(sentence: &str) -> bool {
    let t = sentence.trim();
    t.starts_with('<') && t.ends_with('>')
}

/// The least share of the quoted sentence's score that a second quoted sentence needs (a
/// neighbour taken for a pronoun or for length, or the runner-up): a sentence under it may be
/// anything a document holds, instructions to the reader included.
const ON_TOPIC_SHARE: f32 = 0.5;

/// The packed source holding a linking sentence, with its candidate.
pub(super) fn linked_source<'c>(
    link: &'c Link,
    candidates: &'c [Candidate],
    sources: &'c [Source],
) -> Option<(&'c Link, &'c Source, &'c Candidate)> {
    let c = candidates
        .iter()
        .find(|c| c.hit.chunk_id == link.chunk_id)?;
    let src = sources.iter().find(|s| {
        s.chunk_id == link.chunk_id
            && s.start <= c.hit.start + link.start
            && c.hit.start + link.end <= s.end
    })?;
    Some((link, src, c))
}

/// The bytes to quote around sentence `k` of a chunk (at most two sentences, inside the packed
/// range `lo..hi`): the sentence with what it announces when it ends with a colon (the listing
/// or item that follows, a fence line skipped); with the sentence before when it opens on a
/// word that points back to it ("This file keeps track of …" after the sentence naming the
/// file); a short sentence with the next. A neighbour taken for a pronoun or for length must be
/// about the question too (at least half the sentence's score): never an unrelated sentence,
/// which may be anything a document holds, instructions to the reader included.
pub(super) fn extract_span(
    text: &str,
    sentences: &[(usize, usize, f32)],
    k: usize,
    (lo, hi): (usize, usize),
) -> (usize, usize) {
    let (s, e, score) = sentences[k];
    let this = &text[s..e];
    let inside = |&&(a, b, _): &&(usize, usize, f32)| a >= lo && b <= hi;
    if this.ends_with(':') {
        let announced = sentences[k + 1..]
            .iter()
            .filter(inside)
            .find(|&&(a, b, _)| !text[a..b].trim_start().starts_with("```"));
        if let Some(&(_, b, _)) = announced {
            return (s, b);
        }
    }
    let on_topic = |i: usize| {
        sentences
            .get(i)
            .filter(inside)
            .filter(|n| n.2 >= score * ON_TOPIC_SHARE)
            .copied()
    };
    if points_back(this)
        && let Some((a, _, _)) = k.checked_sub(1).and_then(on_topic)
    {
        return (a, e);
    }
    match on_topic(k + 1) {
        Some((_, b, _)) if e - s < 60 => (s, b),
        _ => (s, e),
    }
}

/// True when a sentence opens on a word that refers to the sentence before it.
pub(super) fn points_back(sentence: &str) -> bool {
    const OPENERS: &[&str] = &[
        "This", "These", "That", "Those", "It", "Its", "It's", "They", "Their", "Such", "He",
        "She", "His", "Her",
    ];
    let first = sentence
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches([',', ';', ':']);
    OPENERS.contains(&first)
}

#[cfg(test)]
mod tests {
    use super::{document_name, writes_name};

    #[test]
    fn a_documents_name_is_its_title_without_the_disambiguation() {
        assert_eq!(document_name("David Smith (director)"), "David Smith");
        assert_eq!(document_name(" The Jetsons "), "The Jetsons");
        assert_eq!(document_name("(1980–99)"), "(1980–99)");
        assert_eq!(
            document_name("List of North Carolina hurricanes (1980–99)"),
            "List of North Carolina hurricanes"
        );
    }

    #[test]
    fn a_name_is_written_as_whole_words_and_must_be_a_proper_one() {
        let q = "Drew Fuller starred in \"Charmed\", shown on The WB; installation aside?";
        assert!(writes_name(q, "Drew Fuller"));
        assert!(writes_name(q, "WB"));
        assert!(writes_name(q, "Charmed"));
        assert!(!writes_name(q, "Drew Full"), "not a whole word");
        assert!(!writes_name(q, "drew fuller"), "written otherwise");
        assert!(!writes_name(q, "installation"), "not a name");
        assert!(
            !writes_name(q, "Drew"),
            "a capitalised word that opens the text"
        );
        assert!(!writes_name(q, "B"));
    }
}
