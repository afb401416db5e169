//! The LLM extractor's contract, as pure functions: the instructions, the JSON schema of the reply
//! (sent as a structured-output schema, or described in the prompt for models that only have a
//! plain JSON mode), and the parser that validates and normalizes a reply into candidates.
//!
//! A reply that is not the JSON asked for — malformed, truncated, or missing the `memories` array —
//! is an error, never "no memories". One bad candidate inside a good reply is rejected alone, with
//! its reason, so that one confused item does not throw away the rest.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::extract::{CandidateMemory, ExtractionInput, Intent, KnownMemory};
use crate::model::{MemoryKind, MessageRole};
use crate::validate;

/// The system instructions of an extraction request.
pub const INSTRUCTIONS: &str = "You extract long-term memories about the user from a conversation. \
Read the LAST message in the context of the earlier ones and of the user's known memories. \
Return only durable, user-specific information worth remembering in later conversations: identity, \
where they live, work, preferences, likes and dislikes, allergies and diets, relationships, goals, \
plans and standing rules. Ignore small talk, questions, and what the assistant says about itself. \
Write each memory as one short third-person statement (\"Lives in Dallas\", \"Allergic to peanuts\"). \
Give a `slot` (a normalized key such as user.name, user.home_city, user.employer, user.allergy.peanuts) \
when the fact has one current value, so that a newer value replaces the older one. \
Use action \"update\" with `memory_id` when the message changes a known memory, \"delete\" with \
`memory_id` when it says a known memory is no longer true, otherwise \"add\". \
Return {\"memories\": []} when there is nothing to remember. Never invent facts.";

/// The system instructions of a session summary (the reflect job).
pub const SUMMARY_INSTRUCTIONS: &str = "You summarize a conversation for a long-term memory. \
Write 2 to 6 short sentences in the third person about the user: who they are, where they live and \
work, their preferences, plans, decisions, and anything they asked to be remembered. Keep names, \
places, numbers and dates exactly. Leave out small talk and what the assistant said about itself. \
Reply with the summary text only.";

/// The user message of a summary request: the conversation, oldest first.
pub fn summary_prompt(turns: &[crate::extract::Turn]) -> String {
    let mut out = String::from("Conversation (oldest first):\n");
    for t in turns {
        out.push_str(&format!(
            "{}: {}\n",
            role_label(t.role, t.name.as_deref()),
            t.content
        ));
    }
    out
}

/// A model's summary reply, trimmed and bounded; empty is an error.
pub fn parse_summary(raw: &str, max_bytes: usize) -> Result<String, ReplyError> {
    let text = raw.trim().trim_matches('"').trim();
    if text.is_empty() {
        return Err(ReplyError("the summary is empty".into()));
    }
    let mut end = text.len().min(max_bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Ok(text[..end].to_owned())
}

/// The JSON schema the reply must follow (OpenAI `response_format: json_schema`, strict).
pub fn reply_schema() -> Value {
    let kinds: Vec<&str> = MemoryKind::ALL
        .iter()
        .filter(|k| !matches!(k, MemoryKind::Summary | MemoryKind::Document))
        .map(|k| k.as_str())
        .collect();
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["memories"],
        "properties": {
            "memories": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["action", "kind", "content", "slot", "subject", "importance",
                                 "confidence", "memory_id"],
                    "properties": {
                        "action": { "type": "string", "enum": ["add", "update", "delete"] },
                        "kind": { "type": "string", "enum": kinds },
                        "content": { "type": "string" },
                        "slot": { "type": ["string", "null"] },
                        "subject": { "type": ["string", "null"] },
                        "importance": { "type": "number" },
                        "confidence": { "type": "number" },
                        "memory_id": { "type": ["string", "null"] }
                    }
                }
            }
        }
    })
}

fn role_label(role: MessageRole, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{} ({n})", role.as_str()),
        None => role.as_str().to_owned(),
    }
}

/// The user message of an extraction request: known memories, earlier turns, the last turn.
/// With `describe_schema`, the reply format is spelled out too (for plain JSON mode).
pub fn user_prompt(input: &ExtractionInput, describe_schema: bool) -> String {
    let mut out = String::from("Known memories:\n");
    if input.known.is_empty() {
        out.push_str("(none)\n");
    }
    for KnownMemory {
        id,
        kind,
        slot,
        content,
    } in &input.known
    {
        out.push_str(&format!(
            "- id={id} kind={} slot={} : {content}\n",
            kind.as_str(),
            slot.as_deref().unwrap_or("-")
        ));
    }
    out.push_str("\nConversation (oldest first):\n");
    for t in &input.context {
        out.push_str(&format!(
            "{}: {}\n",
            role_label(t.role, t.name.as_deref()),
            t.content
        ));
    }
    out.push_str(&format!(
        "LAST {}: {}\n",
        role_label(input.turn.role, input.turn.name.as_deref()),
        input.turn.content
    ));
    if let Some(speaker) = input.turn.speaker_subject() {
        out.push_str(&format!(
            "\nThe LAST message is by {speaker}, another participant, not the user: extract what \
             {speaker} says about themself as if {speaker} were the user (slots `user.…`); it is \
             filed under {speaker}'s name.\n"
        ));
    }
    if describe_schema {
        out.push_str("\nReply with one JSON object and nothing else, matching this JSON schema:\n");
        out.push_str(&reply_schema().to_string());
        out.push('\n');
    }
    out
}

/// A reply that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(pub String);

/// What a usable reply held.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ParsedReply {
    /// Valid, normalized candidates.
    pub candidates: Vec<CandidateMemory>,
    /// Items that failed validation, with the reason.
    pub rejected: Vec<String>,
}

/// Models in plain JSON mode sometimes wrap the object in a Markdown code fence.
fn strip_fence(raw: &str) -> &str {
    let t = raw.trim();
    let Some(rest) = t.strip_prefix("```") else {
        return t;
    };
    let rest = rest.strip_prefix("json").unwrap_or(rest);
    rest.strip_suffix("```").unwrap_or(rest).trim()
}

fn unit(item: &Value, field: &str, default: f32) -> Result<f32, String> {
    match item.get(field) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => {
            let x = v
                .as_f64()
                .ok_or_else(|| format!("{field} is not a number"))?;
            if (0.0..=1.0).contains(&x) {
                Ok(x as f32)
            } else {
                Err(format!("{field} {x} is outside 0..1"))
            }
        }
    }
}

fn text<'a>(item: &'a Value, field: &str) -> Result<Option<&'a str>, String> {
    match item.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{field} is not a string")),
    }
}

fn candidate(item: &Value, max_content_bytes: usize) -> Result<CandidateMemory, String> {
    if !item.is_object() {
        return Err("an item is not an object".into());
    }
    let intent = match text(item, "action")?.unwrap_or("add") {
        "add" => Intent::Add,
        "update" => Intent::Update,
        "delete" => Intent::Delete,
        other => return Err(format!("unknown action '{other}'")),
    };
    let kind_text = text(item, "kind")?.unwrap_or("fact");
    let kind = MemoryKind::parse(kind_text).ok_or_else(|| format!("unknown kind '{kind_text}'"))?;
    let content = text(item, "content")?.ok_or("content is missing")?;
    let content =
        validate::content("content", content, max_content_bytes).map_err(|e| e.to_string())?;
    let slot = text(item, "slot")?
        .map(|s| validate::slot("slot", s))
        .transpose()
        .map_err(|e| e.to_string())?;
    let subject = validate::optional_text("subject", text(item, "subject")?, 256)
        .map_err(|e| e.to_string())?;
    let target = text(item, "memory_id")?
        .map(|s| Uuid::parse_str(s.trim()).map_err(|_| format!("memory_id '{s}' is not a UUID")))
        .transpose()?;
    Ok(CandidateMemory {
        kind,
        content,
        slot,
        subject,
        importance: unit(item, "importance", 0.5)?,
        confidence: unit(item, "confidence", 0.8)?,
        intent,
        target,
    })
}

/// Reads a reply: `{"memories": [...]}`, possibly fenced. Malformed, truncated or shapeless
/// replies are errors; invalid items are rejected one by one.
pub fn parse_reply(raw: &str, max_content_bytes: usize) -> Result<ParsedReply, ReplyError> {
    let value: Value = serde_json::from_str(strip_fence(raw))
        .map_err(|e| ReplyError(format!("the reply is not valid JSON: {e}")))?;
    let items = value
        .get("memories")
        .ok_or_else(|| ReplyError("the reply has no \"memories\" field".into()))?
        .as_array()
        .ok_or_else(|| ReplyError("\"memories\" is not an array".into()))?;
    let mut out = ParsedReply::default();
    for (i, item) in items.iter().enumerate() {
        match candidate(item, max_content_bytes) {
            Ok(c) => out.candidates.push(c),
            Err(why) => out.rejected.push(format!("memories[{i}]: {why}")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Turn;

    #[test]
    fn summaries_are_trimmed_bounded_and_never_empty() {
        assert_eq!(
            parse_summary("  \"Dana lives in Dallas.\"\n", 100).unwrap(),
            "Dana lives in Dallas."
        );
        assert!(parse_summary("   ", 100).is_err());
        assert_eq!(parse_summary("héllo world", 2).unwrap(), "h");
        let turns = vec![Turn {
            role: MessageRole::User,
            name: None,
            speaker_is_user: true,
            content: "I moved to Dallas".into(),
        }];
        assert!(summary_prompt(&turns).contains("user: I moved to Dallas"));
    }

    #[test]
    fn a_good_reply_is_normalized() {
        let raw = r#"{"memories": [
            {"action": "add", "kind": "fact", "content": " Lives in Dallas ", "slot": "User.Home City",
             "subject": null, "importance": 0.8, "confidence": 0.9, "memory_id": null},
            {"action": "delete", "kind": "fact", "content": "Works at Acme", "slot": null,
             "subject": "", "importance": 0.5, "confidence": 0.7,
             "memory_id": "0190a5a0-0000-7000-8000-000000000001"}
        ]}"#;
        let got = parse_reply(raw, 1024).unwrap();
        assert!(got.rejected.is_empty(), "{:?}", got.rejected);
        assert_eq!(got.candidates.len(), 2);
        assert_eq!(got.candidates[0].content, "Lives in Dallas");
        assert_eq!(got.candidates[0].slot.as_deref(), Some("user.home_city"));
        assert_eq!(got.candidates[0].intent, Intent::Add);
        assert_eq!(got.candidates[1].intent, Intent::Delete);
        assert_eq!(got.candidates[1].subject, None);
        assert!(got.candidates[1].target.is_some());
    }

    #[test]
    fn fenced_json_from_plain_json_mode_is_read() {
        let raw = "```json\n{\"memories\": [{\"kind\": \"preference\", \"content\": \"Likes tea\"}]}\n```";
        let got = parse_reply(raw, 1024).unwrap();
        assert_eq!(got.candidates.len(), 1);
        assert_eq!(got.candidates[0].kind, MemoryKind::Preference);
        assert_eq!(got.candidates[0].intent, Intent::Add);
    }

    #[test]
    fn an_empty_list_is_no_memories_but_garbage_is_an_error() {
        assert!(
            parse_reply(r#"{"memories": []}"#, 1024)
                .unwrap()
                .candidates
                .is_empty()
        );
        for bad in [
            "",
            "Sure! The user lives in Dallas.",
            r#"{"memories": [{"kind": "fact", "content": "Lives in Da"#,
            r#"{"facts": []}"#,
            r#"{"memories": {"content": "x"}}"#,
            "[]",
        ] {
            assert!(parse_reply(bad, 1024).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn invalid_items_are_rejected_alone_with_the_reason() {
        let raw = r#"{"memories": [
            {"kind": "fact", "content": "Lives in Dallas"},
            {"kind": "feeling", "content": "Happy"},
            {"kind": "fact", "content": "   "},
            {"kind": "fact", "content": "Likes tea", "importance": 7},
            {"kind": "fact", "content": "Likes jazz", "slot": "jazz"},
            {"kind": "fact", "content": "X", "action": "merge"},
            {"kind": "fact", "content": "Y", "memory_id": "not-a-uuid"},
            "just a string"
        ]}"#;
        let got = parse_reply(raw, 1024).unwrap();
        assert_eq!(got.candidates.len(), 1);
        assert_eq!(got.rejected.len(), 7, "{:?}", got.rejected);
        assert!(got.rejected[0].contains("unknown kind 'feeling'"));
        assert!(got.rejected[2].contains("importance"));
        let too_long = format!(r#"{{"memories": [{{"content": "{}"}}]}}"#, "a".repeat(100));
        assert_eq!(parse_reply(&too_long, 50).unwrap().rejected.len(), 1);
    }

    #[test]
    fn the_prompt_carries_context_known_memories_and_the_schema_when_asked() {
        let input = ExtractionInput {
            turn: Turn {
                role: MessageRole::User,
                name: Some("Dana".into()),
                speaker_is_user: true,
                content: "I just moved to Dallas.".into(),
            },
            context: vec![Turn {
                role: MessageRole::Assistant,
                name: None,
                speaker_is_user: true,
                content: "How is San Francisco?".into(),
            }],
            known: vec![KnownMemory {
                id: Uuid::from_u128(1),
                kind: MemoryKind::Fact,
                slot: Some("user.home_city".into()),
                content: "Lives in San Francisco".into(),
            }],
        };
        let p = user_prompt(&input, false);
        assert!(p.contains("slot=user.home_city : Lives in San Francisco"));
        assert!(p.contains("assistant: How is San Francisco?"));
        assert!(p.ends_with("LAST user (Dana): I just moved to Dallas.\n"));
        assert!(!p.contains("JSON schema"));
        assert!(user_prompt(&input, true).contains("\"memories\""));
        let schema = reply_schema();
        assert_eq!(schema["required"][0], "memories");
    }
}
