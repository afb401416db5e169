//! Chat with memory (the Chat RPC): the prompt a wrapped client would send, built from the
//! memory as it is before the message; the message stored like any ingested turn and extracted;
//! and, with a chat model, the reply — stored as the assistant's turn.

use std::time::Duration;

use memoire_core::Result;
use memoire_core::chat::{self, PromptMessage};
use memoire_core::command::{Ingest, NewEpisode, RecallQuery};
use memoire_core::model::MessageRole;
use uuid::Uuid;

use crate::{ExtractionWait, Permit, UseCases};

/// The tokenizer Chat packs the memory block with.
const TOKENIZER: &str = "cl100k_base";

/// One chat turn to take.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    /// The user's message as an Ingest of one message (stored unless `dry_run`).
    pub message: Ingest,
    /// Recall for the message (its text is the message).
    pub recall: RecallQuery,
    /// Items recalled.
    pub k: usize,
    /// Token budget of each part of the memory block.
    pub budget: usize,
    /// The longest wait for the message's extraction.
    pub wait: Duration,
    /// Build the prompt only: store nothing, ask no model.
    pub dry_run: bool,
}

/// What a chat turn did.
#[derive(Debug, Clone)]
pub struct Chatted {
    /// The prompt the model received (or would receive).
    pub prompt: Vec<PromptMessage>,
    /// The model and its reply, when a model replied.
    pub reply: Option<(String, String)>,
    /// Where the message's extraction stands (`None` for a dry run).
    pub extraction: Option<ExtractionWait>,
    /// The message's episode (`None` for a dry run).
    pub episode_id: Option<Uuid>,
    /// The reply's episode.
    pub reply_episode_id: Option<Uuid>,
}

impl UseCases {
    /// Builds the prompt from the memory as it is before the message (Conscious, then Recall:
    /// what a wrapped client sends), stores the message, and — while its extraction runs — asks
    /// the chat model, whose reply is stored as the assistant's turn. A retry of a message
    /// (same `message_id`) whose reply was stored returns that reply without asking again.
    pub async fn chat(&self, permit: &Permit, turn: ChatTurn) -> Result<Chatted> {
        let scope = turn.message.scope.clone();
        let session = turn.message.session_id.clone();
        let text = turn.recall.text.clone();
        // The two reads of the memory block, at once.
        let ((_, conscious, _), recalled) = tokio::try_join!(
            self.conscious(&scope, Some(&session), turn.budget, TOKENIZER),
            self.recall_with(
                permit,
                turn.recall,
                turn.k,
                turn.budget,
                TOKENIZER,
                None,
                !turn.dry_run,
            ),
        )?;
        let prompt = chat::prompt(&conscious.text, &recalled.packed.text, &text);
        if turn.dry_run {
            return Ok(Chatted {
                prompt,
                reply: None,
                extraction: None,
                episode_id: None,
                reply_episode_id: None,
            });
        }
        let reply_id = turn.message.messages[0]
            .message_id
            .as_ref()
            .map(|id| format!("{id}/reply"));
        let (ingested, _) = self.ingest(turn.message, None).await?;
        let ids: Vec<Uuid> = ingested.iter().map(|i| i.episode_id).collect();
        let retried = ingested.first().is_some_and(|i| i.duplicate);
        let earlier = match (&reply_id, retried) {
            (Some(id), true) => self.store().episode_by_message_id(&scope, id).await?,
            _ => None,
        };
        let model = self.settings().chat.clone();
        let name = model
            .as_ref()
            .map(|m| m.model().to_owned())
            .unwrap_or_default();
        let extracted = self.await_extraction(scope.tenant_id, &ids, turn.wait);
        let (extraction, reply) = match (earlier, model) {
            (Some(stored), _) => (extracted.await?, Some((stored.content, stored.id))),
            (None, None) => (extracted.await?, None),
            (None, Some(model)) => {
                let (extraction, reply) = tokio::join!(extracted, model.reply(&prompt));
                let (extraction, reply) = (extraction?, reply?);
                // The reply is a turn of the conversation like any other (extracted in the
                // background), stored once per message id.
                let (stored, _) = self
                    .ingest(
                        Ingest {
                            scope,
                            session_id: session,
                            messages: vec![NewEpisode {
                                role: MessageRole::Assistant,
                                name: None,
                                speaker_is_user: false,
                                content: reply.clone(),
                                message_id: reply_id,
                                occurred_at: None,
                            }],
                        },
                        None,
                    )
                    .await?;
                let id = stored.first().map(|i| i.episode_id).unwrap_or_default();
                (extraction, Some((reply, id)))
            }
        };
        Ok(Chatted {
            prompt,
            extraction: Some(extraction),
            episode_id: ids.first().copied(),
            reply_episode_id: reply.as_ref().map(|(_, id)| *id),
            reply: reply.map(|(text, _)| (name, text)),
        })
    }
}
