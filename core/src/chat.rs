//! Chat with memory: the prompt a wrapped client sends to its model — the memory block
//! (Conscious, then Recall for the message) as a system message before the user's message, the
//! same words as the Python SDK's `wrap()` — and the model that answers it ([`Responder`]).

use crate::embed::BoxFuture;
use crate::model::MessageRole;

/// The first line of the memory block (the Python SDK's `_MEMORY_HEADER`).
pub const MEMORY_HEADER: &str =
    "Relevant memories about the user (from Mémoire; each line ends with its id):";

/// One message of a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptMessage {
    /// System (the memory block) or user.
    pub role: MessageRole,
    /// The text.
    pub content: String,
}

/// The prompt for `message`: the memory block from the packed Conscious and Recall contexts as
/// a system message (none when both are empty), then the message.
pub fn prompt(conscious: &str, recalled: &str, message: &str) -> Vec<PromptMessage> {
    let parts: Vec<&str> = [conscious.trim(), recalled.trim()]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    let mut prompt = Vec::with_capacity(2);
    if !parts.is_empty() {
        prompt.push(PromptMessage {
            role: MessageRole::System,
            content: format!("{MEMORY_HEADER}\n{}", parts.join("\n")),
        });
    }
    prompt.push(PromptMessage {
        role: MessageRole::User,
        content: message.to_owned(),
    });
    prompt
}

/// A chat model: the prompt in, the assistant's reply out.
pub trait Responder: Send + Sync + std::fmt::Debug {
    /// The model's name.
    fn model(&self) -> &str;
    /// The reply to `prompt`.
    fn reply<'a>(&'a self, prompt: &'a [PromptMessage]) -> BoxFuture<'a, crate::Result<String>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_block_comes_first_and_only_when_there_is_memory() {
        let p = prompt(
            "## About the user\n- Lives in Porto\n",
            "",
            "Plan my Saturday",
        );
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].role, MessageRole::System);
        assert_eq!(
            p[0].content,
            format!("{MEMORY_HEADER}\n## About the user\n- Lives in Porto")
        );
        assert_eq!(p[1].content, "Plan my Saturday");

        let both = prompt("conscious", " recalled ", "hi");
        assert_eq!(
            both[0].content,
            format!("{MEMORY_HEADER}\nconscious\nrecalled")
        );

        let none = prompt("  ", "", "hi");
        assert_eq!(none.len(), 1);
        assert_eq!(none[0].role, MessageRole::User);
    }
}
