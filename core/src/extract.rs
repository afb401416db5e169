//! Extraction: what a conversation turn says about the user, as candidate memories.
//!
//! [`RuleExtractor`] is the built-in, deterministic extractor used when no LLM is configured: it
//! recognises the common first-person statements — name, where the user lives or moved to, job
//! and employer, likes, dislikes and preferences, allergies and diets, family, pets and other
//! relationships, goals and plans, birthdays — and gives each a normalized slot, so that "I just
//! moved to Dallas" supersedes "I live in San Francisco". It prefers missing a statement to
//! inventing one: every pattern is anchored on first-person wording and a bounded object.

use crate::embed::BoxFuture;
use crate::model::{Basis, MemoryKind, MessageRole};

/// What a candidate asks the resolver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Remember it (create, or update / supersede what has the same identity).
    Add,
    /// It changes a known memory (LLM extraction, with `target`); resolved like `Add`, but a
    /// similar target is updated even without a shared subject.
    Update,
    /// It is no longer true: tombstone what has the same identity, if anything does.
    Delete,
}

/// One candidate memory.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateMemory {
    /// Kind.
    pub kind: MemoryKind,
    /// The statement, third person ("Lives in Dallas").
    pub content: String,
    /// Normalized slot.
    pub slot: Option<String>,
    /// Who it is about when not the user.
    pub subject: Option<String>,
    /// 0..1.
    pub importance: f32,
    /// How sure the extractor is, 0..1.
    pub confidence: f32,
    /// Add or delete.
    pub intent: Intent,
    /// The existing memory the extractor says this is about (LLM extraction only); the resolver
    /// still checks the identity before acting on it.
    pub target: Option<uuid::Uuid>,
}

/// Longest slot key made from free text, in bytes.
const MAX_KEY_BYTES: usize = 48;

/// A slot key from free text: its words in slot form (NFKC, lowercase; any script) joined by `_`
/// ("Green Tea" → "green_tea", "寿司" → "寿司"), at most 48 bytes on a character boundary.
/// Punctuation separates words and is dropped.
pub fn slot_key(s: &str) -> String {
    let form = crate::validate::slot_form(s);
    let mut out = String::new();
    for word in form
        .split(|c: char| c == '_' || !crate::validate::slot_char(c))
        .filter(|w| !w.is_empty())
    {
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + word.len() > MAX_KEY_BYTES {
            // A word that does not fit whole is cut on a character boundary, then the key ends.
            if sep == 1 {
                out.push('_');
            }
            for c in word.chars() {
                if out.len() + c.len_utf8() > MAX_KEY_BYTES {
                    break;
                }
                out.push(c);
            }
            break;
        }
        if sep == 1 {
            out.push('_');
        }
        out.push_str(word);
    }
    out.trim_end_matches('_').to_owned()
}

/// Words that follow "I'm" without being a name.
const NOT_NAMES: &[&str] = &[
    "a",
    "an",
    "the",
    "not",
    "so",
    "very",
    "really",
    "just",
    "also",
    "still",
    "here",
    "back",
    "done",
    "fine",
    "good",
    "great",
    "happy",
    "sad",
    "tired",
    "sorry",
    "sure",
    "ok",
    "okay",
    "allergic",
    "vegan",
    "vegetarian",
    "from",
    "in",
    "at",
    "on",
    "going",
    "trying",
    "planning",
    "working",
    "living",
    "moving",
    "looking",
    "thinking",
    "feeling",
    "married",
    "single",
    "pregnant",
    "retired",
    "new",
    "hungry",
    "busy",
    "free",
    "late",
    "ready",
    "excited",
    "worried",
    "interested",
];

/// Verbs of wanting that are about the conversation, not a goal ("I want to ask …").
const CONVERSATIONAL_VERBS: &[&str] = &[
    "ask",
    "say",
    "share",
    "add",
    "thank",
    "tell",
    "brag",
    "head",
    "grab",
    "call",
    "think",
    "understand",
    "remember",
    "hear",
    "keep",
    "check",
    "know",
    "mention",
    "clarify",
    "confirm",
    "apologize",
    "point",
    "talk",
    "chat",
    "vent",
    "rant",
    "explain",
    "show",
    "update",
    "let",
    "hop",
    "sleep",
    "rest",
    "figure",
];

/// Words after "this" / "that" that make it a time, not a thing: "this year", "that summer".
const TIME_WORDS: &[&str] = &[
    "year",
    "month",
    "week",
    "weekend",
    "summer",
    "winter",
    "spring",
    "fall",
    "autumn",
    "morning",
    "evening",
    "afternoon",
    "season",
    "semester",
    "quarter",
    "time",
];

/// Whether a phrase points back into the conversation ("think about it", "keep this short")
/// rather than naming something: "it" anywhere, "this" / "that" unless it names a time.
fn points_back(phrase: &str) -> bool {
    let words: Vec<String> = phrase
        .split_whitespace()
        .map(|w| w.to_lowercase())
        .collect();
    words.iter().enumerate().any(|(i, w)| {
        w == "it"
            || (["this", "that"].contains(&w.as_str())
                && !words
                    .get(i + 1)
                    .is_some_and(|n| TIME_WORDS.contains(&n.as_str())))
    })
}

/// Nationality and faith adjectives, which follow "I'm" and "my dad is" like names do.
const DEMONYMS: &[&str] = &[
    "american",
    "canadian",
    "mexican",
    "brazilian",
    "argentinian",
    "argentine",
    "chilean",
    "peruvian",
    "colombian",
    "venezuelan",
    "cuban",
    "jamaican",
    "british",
    "english",
    "scottish",
    "welsh",
    "irish",
    "french",
    "german",
    "italian",
    "spanish",
    "portuguese",
    "dutch",
    "belgian",
    "swiss",
    "austrian",
    "polish",
    "czech",
    "slovak",
    "russian",
    "ukrainian",
    "greek",
    "turkish",
    "swedish",
    "norwegian",
    "danish",
    "finnish",
    "icelandic",
    "hungarian",
    "romanian",
    "bulgarian",
    "serbian",
    "croatian",
    "bosnian",
    "albanian",
    "chinese",
    "japanese",
    "korean",
    "vietnamese",
    "thai",
    "filipino",
    "filipina",
    "indonesian",
    "malaysian",
    "singaporean",
    "indian",
    "pakistani",
    "bangladeshi",
    "nepali",
    "sri lankan",
    "iranian",
    "persian",
    "iraqi",
    "israeli",
    "lebanese",
    "syrian",
    "egyptian",
    "moroccan",
    "algerian",
    "tunisian",
    "nigerian",
    "kenyan",
    "ghanaian",
    "ethiopian",
    "somali",
    "south african",
    "australian",
    "kiwi",
    "asian",
    "european",
    "african",
    "latino",
    "latina",
    "hispanic",
    "arab",
    "catholic",
    "jewish",
    "muslim",
    "buddhist",
    "hindu",
    "sikh",
    "mormon",
    "protestant",
    "atheist",
];

fn is_demonym(word: &str) -> bool {
    DEMONYMS.contains(&word.to_lowercase().as_str())
}

const RELATIONS: &[&str] = &[
    "wife",
    "husband",
    "partner",
    "girlfriend",
    "boyfriend",
    "sister",
    "brother",
    "mother",
    "mom",
    "mum",
    "father",
    "dad",
    "son",
    "daughter",
    "friend",
    "best friend",
    "boss",
    "manager",
    "cousin",
    "aunt",
    "uncle",
    "grandmother",
    "grandfather",
    "roommate",
    "colleague",
    "coworker",
    "fiance",
    "fiancee",
];

const PETS: &[&str] = &[
    "dog",
    "cat",
    "puppy",
    "kitten",
    "parrot",
    "rabbit",
    "hamster",
    "horse",
    "turtle",
    "fish",
    "snake",
    "lizard",
    "bird",
    "retriever",
    "labrador",
    "terrier",
    "poodle",
    "beagle",
    "bulldog",
    "collie",
    "shepherd",
    "spaniel",
    "dachshund",
    "husky",
    "tabby",
    "siamese",
    "goldfish",
    "budgie",
    "guinea pig",
    "ferret",
];

const DIETS: &[&str] = &[
    "vegetarian",
    "vegan",
    "pescatarian",
    "gluten-free",
    "lactose intolerant",
    "keto",
    "halal",
    "kosher",
];

/// The rule extractor.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleExtractor;

/// Splits text into statements (sentences ending in `.`, `!`, `;` or a newline), trimmed, without
/// empty ones. Questions — sentences ending in `?`, "I live in Phoenix?" included — are dropped:
/// they ask, they do not tell.
fn sentences(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, c) in text.char_indices() {
        if matches!(c, '.' | '!' | '?' | ';' | '\n') {
            let s = text[start..i].trim();
            if c != '?' && !s.is_empty() {
                out.push(s);
            }
            start = i + c.len_utf8();
        }
    }
    let rest = text[start..].trim();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Words that open a subordinate clause whose statement is not asserted: "If I moved to
/// Chicago, I want to …", "When I live in Rome …".
const CONDITIONALS: &[&str] = &[
    "if ",
    "when ",
    "whenever ",
    "unless ",
    "once ",
    "as soon as ",
    "even if ",
    "suppose ",
    "supposing ",
    "imagine ",
    "what if ",
    "in case ",
];

/// Words after which a first-person clause is someone else's words: "She told me, I live in
/// Graz", "his catchphrase: I hate traffic".
const REPORTING: &[&str] = &[
    "said",
    "says",
    "told",
    "tells",
    "wrote",
    "writes",
    "asked",
    "asks",
    "texted",
    "replied",
    "quote",
    "quoted",
    "joked",
    "yelled",
    "whispered",
    "catchphrase",
    "motto",
];

/// Splits a sentence into first-person clauses at "and I …", ", and I …", ", I …" and "and my …",
/// keeping the "I" (or "my") with the clause it starts. A sentence that opens with a condition is
/// not a statement at all; a clause after reported speech (a reporting verb, a colon or a quote
/// mark before it) is someone else's and is dropped.
fn clauses(s: &str) -> Vec<String> {
    let lower = s.to_lowercase();
    if CONDITIONALS.iter().any(|c| lower.starts_with(c)) {
        return Vec::new();
    }
    let mut cuts = vec![0];
    for (sep, keep) in [
        (" and i ", 2),
        (" and i'", 2),
        (", i ", 2),
        (", i'", 2),
        (" and my ", 3),
        (", my ", 3),
    ] {
        let mut from = 0;
        while let Some(i) = lower[from..].find(sep) {
            let at = from + i;
            // Cut right before the "i" / "my".
            cuts.push(at + sep.len() - keep);
            from = at + sep.len();
        }
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts.push(s.len());
    cuts.windows(2)
        .filter(|w| !reported(&lower[..w[0]]))
        .map(|w| {
            s[w[0]..w[1]]
                .trim()
                .trim_end_matches(',')
                .trim_end_matches(" and")
                .trim()
                .to_owned()
        })
        .filter(|c| !c.is_empty())
        .collect()
}

/// Whether the text before a clause (lowercase) makes the clause reported speech.
fn reported(before: &str) -> bool {
    before.contains([':', '"', '“', '”'])
        || before
            .split(|c: char| !c.is_alphanumeric())
            .any(|w| REPORTING.contains(&w))
}

/// Where the object of a statement ends: a reason, a contrast or an aside follows.
const OBJECT_BREAKS: &[&str] = &[
    " but ",
    " because ",
    " cause ",
    " cuz ",
    " since ",
    " so ",
    " though ",
    " although ",
    " and i ",
    " - ",
    " – ",
    " — ",
    " especially ",
    " which ",
    " when ",
    " whenever ",
];

/// Filler that may end a statement without being part of its object ("I love jazz lol").
const TRAILING_FILLER: &[&str] = &[
    "lol",
    "haha",
    "hahaha",
    "lmao",
    "rofl",
    "xd",
    "so much",
    "a lot",
    "very much",
    "too",
    "as well",
    "tbh",
    "honestly",
    "ngl",
    "btw",
    "though",
];

/// Objects that make "I love …" a reaction to the conversation rather than a taste: "I love
/// that!", "I like the way you think", "I love it and …", "I enjoy talking with you".
const REACTION_HEADS: &[&str] = &[
    "that",
    "this",
    "it",
    "these",
    "those",
    "them",
    "him",
    "her",
    "how",
    "what",
    "when",
    "where",
    "why",
    "the way",
    "the thought",
    "the idea",
    "the fact",
    "the sound of",
];

/// The object of a statement: up to the first clause break, trimmed of filler, at most 8 words;
/// none when it speaks to or about the listener ("you", "your").
fn object(rest: &str) -> Option<String> {
    let mut cut = rest.split([',', '(', ')', '!', ':']).next().unwrap_or("");
    loop {
        let lower = cut.to_lowercase();
        match OBJECT_BREAKS.iter().filter_map(|b| lower.find(b)).min() {
            Some(i) => cut = &cut[..i],
            None => break,
        }
    }
    let mut words: Vec<&str> = cut.split_whitespace().collect();
    loop {
        let lower: Vec<String> = words.iter().map(|w| w.to_lowercase()).collect();
        let Some(n) = TRAILING_FILLER.iter().find_map(|f| {
            let f: Vec<&str> = f.split(' ').collect();
            (lower.len() > f.len() && lower[lower.len() - f.len()..] == f[..]).then_some(f.len())
        }) else {
            break;
        };
        words.truncate(words.len() - n);
    }
    if words.is_empty() || words.len() > 8 {
        return None;
    }
    if words.iter().any(|w| {
        let w = w.to_lowercase();
        let w = w.trim_matches(|c: char| !c.is_alphanumeric());
        matches!(
            w,
            "you" | "your" | "yours" | "you're" | "ya" | "u" | "y'all"
        )
    }) {
        return None;
    }
    let trimmed = words.join(" ");
    let trimmed = trimmed.trim_end_matches(|c: char| !c.is_alphanumeric());
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

/// Whether an object is a reaction to the conversation rather than a thing liked.
fn reaction(object: &str) -> bool {
    let lower = object.to_lowercase();
    REACTION_HEADS
        .iter()
        .any(|h| lower == *h || lower.starts_with(&format!("{h} ")))
}

/// A place or an organization: capitalized words ("San Francisco", "New York City"), at most 4,
/// joined by the small words of names ("Bank of America", "Rio de Janeiro"), after an optional
/// "the" ("the Bay Area"). Stops at the first word that ends with punctuation.
fn place(rest: &str) -> Option<String> {
    let raw: Vec<&str> = rest.split_whitespace().collect();
    let capitalized = |w: &str| w.chars().next().is_some_and(char::is_uppercase);
    let mut words: Vec<&str> = Vec::new();
    for (i, w) in raw.iter().enumerate() {
        let clean = w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '&');
        let next_capitalized = raw.get(i + 1).is_some_and(|n| capitalized(n));
        let joins = ["de", "la", "del", "do", "da", "of", "and", "&"].contains(&clean)
            && !words.is_empty()
            && next_capitalized;
        let article = i == 0 && clean.eq_ignore_ascii_case("the") && next_capitalized;
        if clean.is_empty() || !(capitalized(clean) || joins || article) || words.len() == 5 {
            break;
        }
        words.push(clean);
        if w.ends_with([',', '.', '!', '?', ';', ':']) {
            break;
        }
    }
    if words.len() == 1 && words[0].eq_ignore_ascii_case("the") {
        return None;
    }
    (!words.is_empty()).then(|| words.join(" "))
}

/// A person's name: one or two capitalized words, not a common non-name.
fn name(rest: &str) -> Option<String> {
    let words: Vec<&str> = rest
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-' && c != '\''))
        .take_while(|w| w.chars().next().is_some_and(char::is_uppercase))
        .take(2)
        .collect();
    let first = words.first()?;
    if NOT_NAMES.contains(&first.to_lowercase().as_str()) || first.len() < 2 || is_demonym(first) {
        return None;
    }
    Some(words.join(" "))
}

/// Discourse markers that open a sentence without changing what it states.
const OPENERS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "well",
    "so",
    "also",
    "btw",
    "oh",
    "and",
    "but",
    "anyway",
    "anyways",
    "honestly",
    "ngl",
    "tbh",
    "fyi",
    "ok",
    "okay",
    "yeah",
    "yes",
    "actually",
    "lol",
    "haha",
    "plus",
    "basically",
];

/// The sentence without its leading discourse markers ("Honestly, so I …" → "I …").
fn without_openers(s: &str) -> &str {
    let mut s = s.trim_start();
    loop {
        let word_end = s.find(|c: char| !c.is_alphanumeric()).unwrap_or(s.len());
        let word = s[..word_end].to_lowercase();
        let rest = &s[word_end..];
        // A marker is followed by a comma or a space, and something follows it.
        let follows = rest.trim_start_matches([',', ' ']).trim_start();
        if OPENERS.contains(&word.as_str())
            && (rest.starts_with(',') || rest.starts_with(' '))
            && !follows.is_empty()
            && word_end > 0
        {
            s = follows;
        } else {
            return s;
        }
    }
}

/// Adverbs that may stand between "I" and its verb without changing the statement ("I also
/// really love …", "I don't really like …", "I currently live in …").
const ADVERBS: &[&str] = &[
    "also",
    "really",
    "just",
    "totally",
    "absolutely",
    "honestly",
    "currently",
    "still",
    "actually",
    "truly",
    "definitely",
    "seriously",
    "genuinely",
    "literally",
    "personally",
    "now",
    "kinda",
    "lowkey",
];

/// A clause in the extractor's canonical spelling: typographic apostrophes become `'`, the
/// common apostrophe-less contractions get theirs back ("im", "dont", "ive"), and adverbs right
/// after "I" (or after its negation) are dropped. Words are joined by single spaces.
fn normalized_clause(c: &str) -> String {
    let c = c.replace(['’', '‘'], "'");
    let mut out: Vec<String> = Vec::new();
    for word in c.split_whitespace() {
        let lower = word.to_lowercase();
        let prev = out.last().map(|w| w.to_lowercase()).unwrap_or_default();
        let after_subject = matches!(
            prev.as_str(),
            "i" | "i'm" | "am" | "don't" | "not" | "i've" | "have"
        );
        if after_subject && ADVERBS.contains(&lower.as_str()) {
            continue;
        }
        let fixed = match lower.as_str() {
            "im" if out.is_empty() => "I'm".to_owned(),
            "ive" if out.is_empty() => "I've".to_owned(),
            "dont" => "don't".to_owned(),
            "cant" => "can't".to_owned(),
            "havent" => "haven't".to_owned(),
            _ => word.to_owned(),
        };
        out.push(fixed);
    }
    out.join(" ")
}

fn strip_prefix_ci<'a>(s: &'a str, prefixes: &[&str]) -> Option<&'a str> {
    let lower = s.to_lowercase();
    prefixes.iter().find_map(|p| {
        if lower.starts_with(p) && s.is_char_boundary(p.len()) {
            Some(s[p.len()..].trim_start())
        } else {
            None
        }
    })
}

fn fact(content: String, slot: Option<String>, importance: f32) -> CandidateMemory {
    CandidateMemory {
        kind: MemoryKind::Fact,
        content,
        slot,
        subject: None,
        importance,
        confidence: 0.9,
        intent: Intent::Add,
        target: None,
    }
}

fn of_kind(
    kind: MemoryKind,
    content: String,
    slot: Option<String>,
    importance: f32,
) -> CandidateMemory {
    CandidateMemory {
        kind,
        ..fact(content, slot, importance)
    }
}

impl RuleExtractor {
    /// Candidates from one user message.
    pub fn extract(&self, text: &str) -> Vec<CandidateMemory> {
        let mut out = Vec::new();
        for s in sentences(text) {
            let s = without_openers(s);
            for clause in clauses(s) {
                let clause = normalized_clause(without_openers(&clause));
                let lower = clause.to_lowercase();
                // Only first-person statements: "I …", "I'm …", "My …", "We have a …".
                if !(lower.starts_with("i ")
                    || lower.starts_with("i'")
                    || lower.starts_with("my ")
                    || lower.starts_with("we have "))
                {
                    continue;
                }
                if let Some(c) = self.clause(&clause) {
                    out.push(c);
                }
            }
        }
        out
    }

    fn clause(&self, c: &str) -> Option<CandidateMemory> {
        let lower = c.to_lowercase();
        // Negated statements first: they are deletions of what the positive form would add.
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i no longer live in ",
                "i don't live in ",
                "i do not live in ",
                "i haven't lived in ",
                "i have not lived in ",
                "i moved away from ",
                "i moved out of ",
            ],
        ) {
            let p = place(rest)?;
            return Some(CandidateMemory {
                intent: Intent::Delete,
                ..fact(format!("Lives in {p}"), Some("user.home_city".into()), 0.8)
            });
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i no longer work at ",
                "i no longer work for ",
                "i don't work at ",
                "i don't work for ",
                "i quit my job at ",
                "i left ",
            ],
        ) {
            let e = place(rest)?;
            return Some(CandidateMemory {
                intent: Intent::Delete,
                ..fact(format!("Works at {e}"), Some("user.employer".into()), 0.7)
            });
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &["my name is ", "call me ", "i'm called ", "i am called "],
        )
        .or_else(|| strip_prefix_ci(c, &["i'm ", "i am ", "im "]))
            && let Some(n) = name(rest)
        {
            // "I'm Dana" but not "I'm Allergic" (handled below) nor "I'm from ..." (NOT_NAMES).
            let name_words = n.split_whitespace().count();
            let last_name_word = rest.split_whitespace().nth(name_words - 1).unwrap_or("");
            let next_word = rest.split_whitespace().nth(name_words).unwrap_or("");
            if next_word.is_empty()
                || last_name_word.ends_with(',')
                || ["btw", "here"].contains(&next_word.to_lowercase().as_str())
                || !next_word.chars().next().is_some_and(char::is_lowercase)
                || lower.starts_with("my name")
                || lower.starts_with("call me")
            {
                return Some(fact(format!("Name is {n}"), Some("user.name".into()), 0.9));
            }
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i live in ",
                "i'm living in ",
                "i am living in ",
                "i just moved to ",
                "i moved to ",
                "i've moved to ",
                "i have moved to ",
                "i recently moved to ",
                "i'm moving to ",
                "i am moving to ",
                "i'm based in ",
                "i am based in ",
                "i relocated to ",
            ],
        ) {
            let p = place(rest)?;
            return Some(fact(
                format!("Lives in {p}"),
                Some("user.home_city".into()),
                0.8,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &["i'm from ", "i am from ", "i grew up in ", "i was born in "],
        ) {
            let p = place(rest)?;
            return Some(fact(
                format!("Is from {p}"),
                Some("user.hometown".into()),
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i work at ",
                "i work for ",
                "i'm working at ",
                "i am working at ",
                "i just started at ",
                "i started at ",
                "i started working at ",
                "i joined ",
            ],
        ) {
            let e = place(rest)?;
            return Some(fact(
                format!("Works at {e}"),
                Some("user.employer".into()),
                0.7,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i work as a ",
                "i work as an ",
                "i work as ",
                "my job is ",
                "i'm employed as a ",
                "i am employed as a ",
            ],
        ) {
            let j = object(rest)?;
            return Some(fact(
                format!("Works as {}", with_article(&j)),
                Some("user.occupation".into()),
                0.7,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i'm allergic to ",
                "i am allergic to ",
                "i have an allergy to ",
                "i've got an allergy to ",
            ],
        ) {
            let a = object(rest)?;
            return Some(fact(
                format!("Is allergic to {a}"),
                Some(format!("user.allergy.{}", slot_key(&a))),
                0.95,
            ));
        }
        for diet in DIETS {
            for p in [
                "i'm ",
                "i am ",
                "i'm a ",
                "i am a ",
                "i've been ",
                "i have been ",
                "i've been a ",
                "i have been a ",
            ] {
                let stated = format!("{p}{diet}");
                if lower.starts_with(&stated)
                    && !lower[stated.len()..].starts_with(|c: char| c.is_alphanumeric())
                {
                    return Some(fact(format!("Is {diet}"), Some("user.diet".into()), 0.85));
                }
            }
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i don't eat ",
                "i do not eat ",
                "i never eat ",
                "i can't eat ",
                "i cannot eat ",
            ],
        ) {
            let f = object(rest)?;
            // "I don't eat much", "I never eat before noon", "I can't eat another bite".
            let first = f.split_whitespace().next().unwrap_or("").to_lowercase();
            if [
                "much", "anything", "before", "after", "until", "till", "another", "more", "any",
                "enough", "at", "in", "on", "during", "late", "early", "out", "that", "this", "it",
                "a", "the", "right", "today", "tonight", "now", "lately", "yet",
            ]
            .contains(&first.as_str())
            {
                return None;
            }
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Does not eat {f}"),
                Some(format!("user.diet.avoid.{}", slot_key(&f))),
                0.8,
            ));
        }
        if let Some((rel, rest)) = relation(c)
            && let Some(n) = name(rest)
        {
            return Some(CandidateMemory {
                subject: Some(n.clone()),
                ..fact(
                    format!("{} is named {n}", capitalize(rel)),
                    Some(format!("user.relation.{}", slot_key(rel))),
                    0.7,
                )
            });
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i have a ",
                "i've got a ",
                "i have an ",
                "we have a ",
                "i own a ",
            ],
        ) {
            let rest_lower = rest.to_lowercase();
            let head: Vec<&str> = rest_lower.split_whitespace().take(3).collect();
            // The pet must be the head of the phrase: "a fish", "a dog named Bingo", but not "a
            // fish tank" nor "a horse trailer".
            let is_head = |pet: &str| {
                let Some(at) = rest_lower.find(pet) else {
                    return false;
                };
                let after = rest_lower[at + pet.len()..].trim_start_matches(['s', ',']);
                let next = after.split_whitespace().next().unwrap_or("");
                next.is_empty()
                    || [
                        "named", "called", "and", "who", "that", "which", "with", "from", "at",
                        "in", "back", "mix", "puppy",
                    ]
                    .contains(&next)
            };
            if let Some(pet) = PETS
                .iter()
                .find(|p| (head.contains(p) || rest_lower.starts_with(*p)) && is_head(p))
            {
                let o = object(rest)?;
                let named = rest_lower
                    .find(" named ")
                    .or_else(|| rest_lower.find(" called "));
                let key = named
                    .and_then(|i| name(&rest[i + 7..]))
                    .map(|n| slot_key(&n))
                    .unwrap_or_else(|| slot_key(pet));
                return Some(fact(
                    format!("Has a {o}"),
                    Some(format!("user.pet.{key}")),
                    0.7,
                ));
            }
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &["my birthday is on ", "my birthday is ", "i was born on "],
        ) {
            let d = object(rest)?;
            return Some(fact(
                format!("Birthday is on {d}"),
                Some("user.birthday".into()),
                0.8,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i want to ",
                "i'd like to ",
                "i would like to ",
                "i'm planning to ",
                "i am planning to ",
                "i plan to ",
                "my goal is to ",
                "i hope to ",
                "i'm trying to ",
                "i am trying to ",
            ],
        ) {
            let g = object(rest)?;
            // Intentions about the conversation itself are not goals: "I want to ask you
            // something", "I'd like to add one more thing", "I'm trying to remember …".
            let verb = g.split_whitespace().next().unwrap_or("").to_lowercase();
            if CONVERSATIONAL_VERBS.contains(&verb.as_str()) || points_back(&g) {
                return None;
            }
            return Some(of_kind(
                MemoryKind::Goal,
                format!("Wants to {g}"),
                Some(format!("user.goal.{}", slot_key(&g))),
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(c, &["i prefer "]) {
            let p = object(rest)?;
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Prefers {p}"),
                None,
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i don't like ",
                "i do not like ",
                "i dislike ",
                "i hate ",
                "i can't stand ",
                "i cannot stand ",
                "i'm not a fan of ",
                "i am not a fan of ",
            ],
        ) {
            let x = object(rest)?;
            if reaction(&x) {
                return None;
            }
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Dislikes {x}"),
                Some(format!("user.taste.{}", slot_key(&x))),
                0.6,
            ));
        }
        if let Some(rest) = strip_prefix_ci(
            c,
            &[
                "i love ",
                "i really love ",
                "i like ",
                "i really like ",
                "i enjoy ",
                "i really enjoy ",
                "i adore ",
                "i'm a fan of ",
                "i am a fan of ",
                "i'm a big fan of ",
                "i am a big fan of ",
                "i'm a huge fan of ",
                "i am a huge fan of ",
            ],
        ) {
            let x = object(rest)?;
            // "I love that!", "I like the way …" are reactions, not tastes.
            if reaction(&x) {
                return None;
            }
            return Some(of_kind(
                MemoryKind::Preference,
                format!("Likes {x}"),
                Some(format!("user.taste.{}", slot_key(&x))),
                0.6,
            ));
        }
        None
    }
}

fn relation(c: &str) -> Option<(&'static str, &str)> {
    let lower = c.to_lowercase();
    let rest = lower.strip_prefix("my ")?;
    let rel = RELATIONS
        .iter()
        .filter(|r| rest.starts_with(*r))
        .max_by_key(|r| r.len())?;
    let after = &c[3 + rel.len()..];
    let after_lower = after.to_lowercase();
    for link in [" is named ", " is called ", "'s name is ", " is "] {
        if let Some(stripped) = after_lower.strip_prefix(link) {
            let start = c.len() - stripped.len();
            return Some((rel, &c[start..]));
        }
    }
    None
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn with_article(job: &str) -> String {
    let first = job.split_whitespace().next().unwrap_or("").to_lowercase();
    if ["a", "an", "the"].contains(&first.as_str()) {
        job.to_owned()
    } else if job.starts_with(['a', 'e', 'i', 'o', 'u', 'A', 'E', 'I', 'O', 'U']) {
        format!("an {job}")
    } else {
        format!("a {job}")
    }
}

/// One turn of a conversation as an extractor sees it (already scrubbed of PII).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Who said it.
    pub role: MessageRole,
    /// The speaker's name, when known.
    pub name: Option<String>,
    /// Whether the speaker is the user (the owner of the user id) rather than someone else in
    /// the conversation.
    pub speaker_is_user: bool,
    /// What was said.
    pub content: String,
}

impl Turn {
    /// Who the speaker's statements about themself are about: `None` for the user, else the
    /// speaker's name (a named speaker who is not the user).
    pub fn speaker_subject(&self) -> Option<&str> {
        if self.speaker_is_user {
            return None;
        }
        self.name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
    }
}

impl Extraction {
    /// The candidates filed under the turn's speaker when the speaker is not the user
    /// ([`attribute_to_speaker`]); unchanged for the user's own turns.
    pub fn filed_under_speaker(mut self, turn: &Turn) -> Self {
        if let Some(speaker) = turn.speaker_subject() {
            attribute_to_speaker(&mut self.candidates, speaker);
        }
        self
    }
}

/// Files candidates that an extractor wrote about the speaker ("the user": a `user.…` slot, or
/// no subject) under `speaker`, a named participant who is not the user: the subject becomes the
/// speaker and `user.home_city` becomes `<speaker>.home_city`, so that what one person says about
/// themself never supersedes another person's facts. A name with no letter or digit gives no slot
/// key, and such a candidate keeps no slot rather than share one with other speakers.
pub fn attribute_to_speaker(candidates: &mut [CandidateMemory], speaker: &str) {
    let key = slot_key(speaker);
    for c in candidates {
        let about_speaker =
            c.subject.is_none() || c.slot.as_deref().is_some_and(|s| s.starts_with("user."));
        if !about_speaker {
            continue;
        }
        c.subject = Some(speaker.to_owned());
        if let Some(attribute) = c.slot.as_deref().and_then(|s| s.strip_prefix("user.")) {
            c.slot = (!key.is_empty()).then(|| format!("{key}.{attribute}"));
        }
    }
}

/// A current memory shown to an extractor, so that it can say "update" or "delete" about it.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownMemory {
    /// Its id.
    pub id: uuid::Uuid,
    /// Kind.
    pub kind: MemoryKind,
    /// Slot.
    pub slot: Option<String>,
    /// Content.
    pub content: String,
}

/// What an extractor reads: the turn to extract from, the turns before it (oldest first), and
/// the user's current memories most related to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractionInput {
    /// The turn.
    pub turn: Turn,
    /// Earlier turns of the same session, oldest first.
    pub context: Vec<Turn>,
    /// Related current memories.
    pub known: Vec<KnownMemory>,
}

/// What an extractor found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extraction {
    /// Valid candidates.
    pub candidates: Vec<CandidateMemory>,
    /// Candidates the extractor proposed that failed validation, with the reason.
    pub rejected: Vec<String>,
    /// Prompt and completion tokens, when a model was asked.
    pub tokens: Option<(u64, u64)>,
}

/// Why extraction of a turn failed. Never "no memories": a reply that cannot be read is an error,
/// kept with the raw reply for the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ExtractError {
    /// What went wrong.
    pub message: String,
    /// The model's raw reply, when there was one.
    pub raw_reply: Option<String>,
}

impl ExtractError {
    /// An error without a reply (network, timeout, HTTP status).
    pub fn new(message: impl Into<String>) -> Self {
        ExtractError {
            message: message.into(),
            raw_reply: None,
        }
    }
}

/// Turns a conversation turn into candidate memories.
pub trait Extractor: Send + Sync + std::fmt::Debug {
    /// The basis recorded on the versions its candidates write (`rule` or `llm`).
    fn basis(&self) -> Basis;

    /// Candidates from `input.turn`.
    fn extract<'a>(
        &'a self,
        input: &'a ExtractionInput,
    ) -> BoxFuture<'a, Result<Extraction, ExtractError>>;
}

/// Distills a conversation into a short abstractive summary (the reflect job, with an LLM).
pub trait Summarizer: Send + Sync + std::fmt::Debug {
    /// A summary of `turns` (oldest first): what the user said about themselves, decided or
    /// asked to remember. An empty or unusable reply is an error.
    fn summarize<'a>(&'a self, turns: &'a [Turn]) -> BoxFuture<'a, Result<String, ExtractError>>;
}

impl Extractor for RuleExtractor {
    fn basis(&self) -> Basis {
        Basis::Rule
    }

    /// Only the user's own messages: the rules read first-person statements, and an assistant
    /// saying "I live in the cloud" is not about the user.
    fn extract<'a>(
        &'a self,
        input: &'a ExtractionInput,
    ) -> BoxFuture<'a, Result<Extraction, ExtractError>> {
        let candidates = if input.turn.role == MessageRole::User {
            RuleExtractor::extract(self, &input.turn.content)
        } else {
            Vec::new()
        };
        Box::pin(async move {
            Ok(Extraction {
                candidates,
                ..Extraction::default()
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> (String, Option<String>) {
        let got = RuleExtractor.extract(text);
        assert_eq!(got.len(), 1, "{text}: {got:?}");
        (got[0].content.clone(), got[0].slot.clone())
    }

    fn slots(text: &str) -> Vec<(String, String)> {
        RuleExtractor
            .extract(text)
            .into_iter()
            .map(|c| (c.content, c.slot.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn the_issue_example() {
        let got = slots("Hi, I'm Dana. I live in San Francisco and I'm allergic to peanuts.");
        assert_eq!(
            got,
            vec![
                ("Name is Dana".into(), "user.name".into()),
                ("Lives in San Francisco".into(), "user.home_city".into()),
                (
                    "Is allergic to peanuts".into(),
                    "user.allergy.peanuts".into()
                ),
            ]
        );
        assert_eq!(
            one("I just moved to Dallas."),
            ("Lives in Dallas".into(), Some("user.home_city".into()))
        );
    }

    #[test]
    fn common_first_person_statements() {
        assert_eq!(
            one("My name is Dana Lee"),
            ("Name is Dana Lee".into(), Some("user.name".into()))
        );
        assert_eq!(
            one("I work at Initech"),
            ("Works at Initech".into(), Some("user.employer".into()))
        );
        assert_eq!(
            one("I work as an engineer"),
            (
                "Works as an engineer".into(),
                Some("user.occupation".into())
            )
        );
        assert_eq!(
            one("I'm vegetarian"),
            ("Is vegetarian".into(), Some("user.diet".into()))
        );
        assert_eq!(
            one("I don't eat pork"),
            (
                "Does not eat pork".into(),
                Some("user.diet.avoid.pork".into())
            )
        );
        assert_eq!(
            one("My sister is named Lucia"),
            (
                "Sister is named Lucia".into(),
                Some("user.relation.sister".into())
            )
        );
        assert_eq!(
            one("I have a golden retriever named Biscuit"),
            (
                "Has a golden retriever named Biscuit".into(),
                Some("user.pet.biscuit".into())
            )
        );
        assert_eq!(
            one("I want to run a marathon next year"),
            (
                "Wants to run a marathon next year".into(),
                Some("user.goal.run_a_marathon_next_year".into())
            )
        );
        assert_eq!(
            one("I love spicy Thai food"),
            (
                "Likes spicy Thai food".into(),
                Some("user.taste.spicy_thai_food".into())
            )
        );
        assert_eq!(
            one("I hate spicy Thai food"),
            (
                "Dislikes spicy Thai food".into(),
                Some("user.taste.spicy_thai_food".into())
            )
        );
        assert_eq!(
            one("My birthday is on March 3"),
            (
                "Birthday is on March 3".into(),
                Some("user.birthday".into())
            )
        );
        assert_eq!(
            one("I'm from Porto"),
            ("Is from Porto".into(), Some("user.hometown".into()))
        );
        assert_eq!(
            one("I prefer window seats"),
            ("Prefers window seats".into(), None)
        );
    }

    #[test]
    fn negations_are_delete_intents() {
        let got = RuleExtractor.extract("I no longer live in Boston");
        assert_eq!(got[0].intent, Intent::Delete);
        assert_eq!(got[0].slot.as_deref(), Some("user.home_city"));
    }

    #[test]
    fn no_invention() {
        for s in [
            "I'm tired today",
            "I'm going home",
            "I love you",
            "What do you think about Paris?",
            "The weather is nice",
            "I live for the weekend",
            "Tell me a joke",
            "I'm not sure",
            "my code does not compile",
        ] {
            assert!(
                RuleExtractor.extract(s).is_empty(),
                "{s}: {:?}",
                RuleExtractor.extract(s)
            );
        }
    }

    #[test]
    fn another_speakers_statements_are_filed_under_their_name() {
        let turn = |name: Option<&str>, speaker_is_user| Turn {
            role: MessageRole::User,
            name: name.map(Into::into),
            speaker_is_user,
            content: String::new(),
        };
        let said = |text: &str| Extraction {
            candidates: RuleExtractor.extract(text),
            ..Extraction::default()
        };
        let melanie = said("I moved to Denver. My sister is named Ann.")
            .filed_under_speaker(&turn(Some("Melanie"), false));
        let got: Vec<_> = melanie
            .candidates
            .iter()
            .map(|c| (c.subject.as_deref(), c.slot.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some("Melanie"), Some("melanie.home_city")),
                (Some("Melanie"), Some("melanie.relation.sister")),
            ]
        );
        // The user's own turns, named or not, stay the user's.
        for t in [turn(Some("Caroline"), true), turn(None, true)] {
            let own = said("I moved to Denver.").filed_under_speaker(&t);
            assert_eq!(own.candidates[0].subject, None);
            assert_eq!(own.candidates[0].slot.as_deref(), Some("user.home_city"));
        }
        // Names in any script make slot keys; one without a letter keeps no slot rather than
        // share one.
        let other = said("I moved to Denver.").filed_under_speaker(&turn(Some("明"), false));
        assert_eq!(other.candidates[0].subject.as_deref(), Some("明"));
        assert_eq!(other.candidates[0].slot.as_deref(), Some("明.home_city"));
        let other = said("I moved to Denver.").filed_under_speaker(&turn(Some("???"), false));
        assert_eq!(other.candidates[0].slot, None);
    }

    #[test]
    fn slot_keys() {
        assert_eq!(slot_key("Green Tea!"), "green_tea");
        assert_eq!(slot_key("crème brûlée"), "crème_brûlée");
        assert_eq!(slot_key("寿司"), "寿司");
        assert_ne!(slot_key("寿司"), slot_key("焼肉"));
        let long = slot_key(&"寿司 ".repeat(30));
        assert!(long.len() <= 48 && !long.ends_with('_'), "{long}");
        // Every key the extractor makes is a valid slot segment.
        for s in [
            "I love 寿司.",
            "I love 焼肉.",
            "I'm allergic to 花生.",
            "I love борщ!",
            "I love 🍣",
        ] {
            for c in RuleExtractor.extract(s) {
                let slot = c.slot.expect("slot");
                assert_eq!(crate::validate::slot("slot", &slot).unwrap(), slot, "{s}");
            }
        }
        let got: Vec<_> = ["I love 寿司.", "I love 焼肉."]
            .iter()
            .flat_map(|s| RuleExtractor.extract(s))
            .map(|c| c.slot)
            .collect();
        assert_ne!(got[0], got[1], "two foods, two slots");
    }
}
