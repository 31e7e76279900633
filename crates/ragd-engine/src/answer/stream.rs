//! Starting a prepared answer on the decoder and streaming it: deltas out as sentences hold,
//! the final [`Answer`] with its citations, support and usage.

use super::*;

impl Prepared {
    /// True when ragd answers without the decoder (a refusal, or an extract).
    pub fn is_refusal(&self) -> bool {
        self.ready
            .as_ref()
            .is_some_and(|a| a.kind == AnswerKind::Refusal)
    }

    /// The chat messages the decoder will see (empty when it is not called).
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Every packed sentence with its score and why it could or could not be quoted, best
    /// first; empty unless the request set `explain`.
    pub fn scored_sentences(&self) -> &[ScoredSentence] {
        &self.scored
    }

    /// The refusal made without the decoder.
    pub(super) fn refusal(&self) -> Answer {
        let mut usage = self.usage.clone();
        usage.total_ms = ms(self.started);
        Answer {
            answer: REFUSAL.to_string(),
            kind: AnswerKind::Refusal,
            support: Vec::new(),
            refused: true,
            cited: false,
            citations: Vec::new(),
            dropped_markers: 0,
            sources: self.sources.clone(),
            finish: None,
            unsupported_draft: None,
            grounding: None,
            usage,
        }
    }

    /// The extract as an answer, when one scores at least the threshold.
    pub(super) fn extract_answer(&self) -> Option<Answer> {
        self.extract.as_ref()?.answer(
            &self.sources,
            self.config.min_extract,
            self.usage.clone(),
            self.started,
        )
    }

    /// Queues the prompt on the decoder (fails at once when its queue is full). An answer made
    /// without the decoder returns a stream that yields only that answer.
    pub fn start(mut self, generator: &Generator) -> Result<AnswerStream> {
        if let Some(answer) = self.ready.take() {
            let mut pending = VecDeque::new();
            if answer.kind == AnswerKind::Extract {
                pending.push_back(AnswerEvent::Delta(answer.answer.clone()));
            }
            pending.push_back(AnswerEvent::Done(Box::new(answer)));
            return Ok(AnswerStream {
                inner: Inner::Ready,
                pending,
                draft: Draft::new(self.sources, String::new(), self.config, Vec::new()),
                extract: None,
                parser: CitationParser::new(),
                markers: Vec::new(),
                usage: self.usage,
                started: self.started,
                first_token_ms: None,
            });
        }
        check_deadline(self.request.deadline)?;
        let sampling = self.request.sampling.clone().unwrap_or(SamplingParams {
            repeat_penalty: self.config.repeat_penalty,
            ..SamplingParams::default()
        });
        if tracing::enabled!(target: "ragd::answer", tracing::Level::DEBUG) {
            for m in &self.messages {
                tracing::debug!(target: "ragd::answer", role = %m.role, "{}", m.content);
            }
        }
        let mut stop = self.request.stop.clone();
        stop.extend(STRUCTURAL_STOPS.iter().map(|s| s.to_string()));
        let generation = generator.generate(GenerateRequest {
            prompt: Prompt::Chat(std::mem::take(&mut self.messages)),
            max_tokens: self.request.max_tokens,
            sampling,
            stop,
            deadline: self.request.deadline,
            force_citation: Some(ForceCitation {
                sources: self.sources.len(),
                unless_starts_with: REFUSAL_STEM.to_string(),
            }),
        })?;
        let mut usage = self.usage;
        usage.prompt_tokens = self.prompt_tokens;
        usage.sources = self.sources.len();
        Ok(AnswerStream {
            inner: Inner::Generating(generation),
            pending: VecDeque::new(),
            draft: Draft::new(
                self.sources,
                self.request.question,
                self.config,
                self.ranked,
            ),
            extract: self.extract,
            parser: CitationParser::new(),
            markers: Vec::new(),
            usage,
            started: self.started,
            first_token_ms: None,
        })
    }
}

impl AnswerStream {
    /// The sources packed into the prompt, in marker order.
    pub fn sources(&self) -> &[Source] {
        &self.draft.sources
    }

    /// Next event, or `None` after `Done` (or an error).
    pub async fn next(&mut self) -> Option<Result<AnswerEvent>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            let ev = match &mut self.inner {
                Inner::Ready => return None,
                Inner::Generating(g) => g.next().await,
            };
            if let Some(err) = self.on(ev) {
                return Some(Err(err));
            }
        }
    }

    /// Blocking variant for threads outside the async runtime.
    pub fn blocking_next(&mut self) -> Option<Result<AnswerEvent>> {
        loop {
            if let Some(ev) = self.pending.pop_front() {
                return Some(Ok(ev));
            }
            let ev = match &mut self.inner {
                Inner::Ready => return None,
                Inner::Generating(g) => g.blocking_next(),
            };
            if let Some(err) = self.on(ev) {
                return Some(Err(err));
            }
        }
    }

    /// Handles one generation event, queueing what it produces; returns an error to pass on.
    pub(super) fn on(&mut self, ev: Option<ragd_models::Result<GenerationEvent>>) -> Option<Error> {
        match ev {
            None => {
                self.inner = Inner::Ready;
                None
            }
            Some(Err(e)) => {
                self.inner = Inner::Ready;
                Some(e.into())
            }
            Some(Ok(GenerationEvent::Delta(d))) => {
                self.first_token_ms.get_or_insert_with(|| ms(self.started));
                self.markers.extend(self.parser.feed(&d));
                for text in self.draft.feed(&d, false) {
                    self.pending.push_back(AnswerEvent::Delta(text));
                }
                None
            }
            Some(Ok(GenerationEvent::Done(c))) => {
                for text in self.draft.feed("", true) {
                    self.pending.push_back(AnswerEvent::Delta(text));
                }
                let mut usage = std::mem::take(&mut self.usage);
                usage.generated_tokens = c.usage.generated_tokens;
                usage.decode_tokens_per_s = c.usage.decode_tokens_per_s();
                usage.prefill_tokens_per_s = c.usage.prefill_tokens_per_s();
                usage.queue_ms = c.usage.queue_seconds * 1e3;
                usage.time_to_first_token_ms =
                    self.first_token_ms.unwrap_or_else(|| ms(self.started));
                self.inner = Inner::Ready;
                let answer = self.finish(c.finish, usage);
                if answer.kind != AnswerKind::Generated {
                    self.pending
                        .push_back(AnswerEvent::Delta(answer.answer.clone()));
                }
                self.pending.push_back(AnswerEvent::Done(Box::new(answer)));
                None
            }
        }
    }

    /// The answer from the checked draft: its supported sentences, else the extract, else a
    /// refusal.
    pub(super) fn finish(&mut self, finish: FinishReason, mut usage: AnswerUsage) -> Answer {
        let d = &self.draft;
        let sources = d.sources.as_ref().clone();
        let dropped = self
            .markers
            .iter()
            .filter(|m| !sources.iter().any(|s| s.marker == m.source))
            .count();
        let grounding = grounding(&d.raw, &self.markers, &sources, &d.question);
        let rewritten = d.kept != d.raw.trim();
        let kept = !d.kept.is_empty() && !d.declined;
        if kept {
            usage.total_ms = ms(self.started);
            let markers = crate::parse_citations(&d.kept);
            let (citations, _) = resolve(&d.kept, &markers, &sources);
            return Answer {
                answer: d.kept.clone(),
                kind: AnswerKind::Generated,
                support: d.support.clone(),
                refused: false,
                cited: !citations.is_empty(),
                citations,
                dropped_markers: dropped,
                sources,
                finish: Some(finish),
                unsupported_draft: rewritten.then(|| d.raw.clone()),
                grounding: Some(grounding),
                usage,
            };
        }
        let draft = (!d.raw.trim().is_empty()).then(|| d.raw.clone());
        let support = d.support.clone();
        let fallback = self
            .extract
            .as_ref()
            .and_then(|x| x.answer(&sources, d.config.min_extract, usage.clone(), self.started));
        usage.total_ms = ms(self.started);
        match fallback {
            Some(mut a) => {
                a.finish = Some(finish);
                a.dropped_markers = dropped;
                a.unsupported_draft = draft;
                a.grounding = Some(grounding);
                a
            }
            None => Answer {
                answer: REFUSAL.to_string(),
                kind: AnswerKind::Refusal,
                support,
                refused: true,
                cited: false,
                citations: Vec::new(),
                dropped_markers: dropped,
                sources,
                finish: Some(finish),
                unsupported_draft: if self.draft.model_refused {
                    None
                } else {
                    draft
                },
                grounding: Some(grounding),
                usage,
            },
        }
    }
}
