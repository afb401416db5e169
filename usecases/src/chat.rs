//! Chat with memory (the Chat RPC): the user's message stored like any ingested turn, the prompt
//! a wrapped client would send built from the memory as it is after the message's extraction,
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
    /// Stores the message (waiting for its extraction), builds the prompt from Conscious and
    /// Recall, and asks the chat model, whose reply is stored as the assistant's turn.
    pub async fn chat(&self, permit: &Permit, turn: ChatTurn) -> Result<Chatted> {
        let scope = turn.message.scope.clone();
        let session = turn.message.session_id.clone();
        let text = turn.recall.text.clone();
        let (extraction, episode_id) = if turn.dry_run {
            (None, None)
        } else {
            let (ingested, waited) = self.ingest(turn.message, Some(turn.wait)).await?;
            (Some(waited), ingested.first().map(|i| i.episode_id))
        };
        let (_, conscious, _) = self
            .conscious(&scope, Some(&session), turn.budget, TOKENIZER)
            .await?;
        let recalled = self
            .recall(permit, turn.recall, turn.k, turn.budget, TOKENIZER, None)
            .await?;
        let prompt = chat::prompt(&conscious.text, &recalled.packed.text, &text);
        let model = match &self.settings().chat {
            Some(model) if !turn.dry_run => model.clone(),
            _ => {
                return Ok(Chatted {
                    prompt,
                    reply: None,
                    extraction,
                    episode_id,
                    reply_episode_id: None,
                });
            }
        };
        let reply = model.reply(&prompt).await?;
        // The reply is a turn of the conversation like any other (extracted in the background).
        let stored = self
            .ingest(
                Ingest {
                    scope,
                    session_id: session,
                    messages: vec![NewEpisode {
                        role: MessageRole::Assistant,
                        name: None,
                        speaker_is_user: false,
                        content: reply.clone(),
                        message_id: None,
                        occurred_at: None,
                    }],
                },
                None,
            )
            .await?;
        Ok(Chatted {
            prompt,
            reply: Some((model.model().to_owned(), reply)),
            extraction,
            episode_id,
            reply_episode_id: stored.0.first().map(|i| i.episode_id),
        })
    }
}
